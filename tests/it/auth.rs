//! Client authentication to pgkeel (SCRAM-SHA-256, md5; plain passwords,
//! verifiers, md5 hashes) and pgkeel's logins to the server (SCRAM, md5,
//! cleartext, trust), against a real PostgreSQL.

use crate::common;
use crate::support;

use support::*;

fn pg_port() -> u16 {
    common::shared_pg().port
}

async fn stored_secret(role: &str) -> String {
    let su = common::pg_client(pg_port(), "postgres", "postgres", "postgres").await;
    su.query_one(
        "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
        &[&role],
    )
    .await
    .unwrap()
    .get(0)
}

async fn works(p: &pgkeel::ProxyHandle, user: &str, password: &str) {
    let c = connect(p.local_addr(), user, password, "appdb")
        .await
        .unwrap_or_else(|e| panic!("{user}: {e}"));
    let r = c.simple_query("SELECT current_user").await.unwrap();
    match r
        .iter()
        .find(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .unwrap()
    {
        tokio_postgres::SimpleQueryMessage::Row(row) => assert_eq!(row.get(0), Some(user)),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn scram_clients_and_every_server_method() {
    let p = start(&config(pg_port(), "", "")).await;
    // Server side: SCRAM (app, scramuser), md5 (md5user), cleartext (clearuser), trust (trustuser).
    for (u, pw) in [
        ("app", "app_password"),
        ("scramuser", "scram_password"),
        ("md5user", "md5_password"),
        ("clearuser", "clear_password"),
        ("trustuser", "trust_password"),
    ] {
        works(&p, u, pw).await;
    }
    p.shutdown().await;
}

#[tokio::test]
async fn wrong_password_unknown_user_unknown_database() {
    let p = start(&config(pg_port(), "", "")).await;
    let e = connect(p.local_addr(), "app", "nope", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    // An unknown role fails as a wrong password does (no enumeration).
    let e = connect(p.local_addr(), "mallory", "x", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    let e = connect(p.local_addr(), "app", "app_password", "no_such_db")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "3D000", "{e}");
    // Still fine for everyone else.
    works(&p, "app", "app_password").await;
    p.shutdown().await;
}

#[tokio::test]
async fn verifier_only_config_passes_scram_through_to_the_server() {
    let verifier = stored_secret("scramuser").await;
    assert!(verifier.starts_with("SCRAM-SHA-256$"));
    let extra = format!("[[users]]\nname = \"scram_via_verifier\"\nserver_user = \"scramuser\"\npassword = \"{verifier}\"\n");
    let p = start(&config(pg_port(), "", &extra)).await;
    let c = connect(
        p.local_addr(),
        "scram_via_verifier",
        "scram_password",
        "appdb",
    )
    .await
    .unwrap();
    let r = c.simple_query("SELECT current_user").await.unwrap();
    match r
        .iter()
        .find(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .unwrap()
    {
        tokio_postgres::SimpleQueryMessage::Row(row) => assert_eq!(row.get(0), Some("scramuser")),
        other => panic!("{other:?}"),
    }
    let e = connect(p.local_addr(), "scram_via_verifier", "wrong", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
    p.shutdown().await;
}

#[tokio::test]
async fn md5_clients_with_plain_password_or_stored_hash() {
    let hash = stored_secret("md5user").await;
    assert!(hash.starts_with("md5"));
    let proxy = "auth_method = \"md5\"";
    let users = format!("[[users]]\nname = \"md5_by_hash\"\nserver_user = \"md5user\"\npassword = \"{hash}\"\nserver_password = \"md5_password\"\n");
    // Plain passwords work for md5 clients; md5user's own hash logs in to the server too.
    let cfg = config(pg_port(), proxy, "").replace(
        "name = \"md5user\"\npassword = \"md5_password\"",
        &format!("name = \"md5user\"\npassword = \"{hash}\""),
    );
    let p = start(&format!("{cfg}\n{users}")).await;
    works(&p, "app", "app_password").await;
    works(&p, "md5user", "md5_password").await;
    let e = connect(p.local_addr(), "md5user", "wrong", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01");
    p.shutdown().await;
}

#[tokio::test]
async fn wrong_server_password_is_reported_to_the_client() {
    let extra = "[[users]]\nname = \"badserverpw\"\nserver_user = \"app\"\npassword = \"client_pw\"\nserver_password = \"not_the_real_one\"\n";
    let p = start(&config(pg_port(), "", extra)).await;
    let e = connect(p.local_addr(), "badserverpw", "client_pw", "appdb")
        .await
        .unwrap_err();
    assert_eq!(sqlstate(&e), "28P01", "{e}");
    p.shutdown().await;
}
