//! Run pgkeel inside your own process, e.g. in an application's test suite.
//!
//!     cargo run --example embed -- 127.0.0.1 5432 app app_password
//!
//! starts a proxy on a free port in front of that server and prints a
//! connection string; Ctrl-C stops it gracefully.

use pgkeel::config::Config;
use pgkeel::Proxy;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [host, port, user, password] = <[String; 4]>::try_from(args)
        .map_err(|_| anyhow::anyhow!("usage: embed HOST PORT USER PASSWORD"))?;
    let config = Config::from_toml_str(&format!(
        r#"
        [proxy]
        listen = "127.0.0.1:0"
        pool_size = 5
        [admin]
        listen = ""
        [[users]]
        name = "{user}"
        password = "{password}"
        [[servers]]
        host = "{host}"
        port = {port}
        "#
    ))?;
    let proxy = Proxy::start(config).await?;
    let addr = proxy.local_addr();
    println!(
        "postgres://{user}:{password}@{}:{}/{user}",
        addr.ip(),
        addr.port()
    );
    tokio::signal::ctrl_c().await?;
    proxy.shutdown().await;
    Ok(())
}
