-- pgkeel's commit tokens ([failover] commit_outcome = "token"). Run once in
-- every database whose clients commit through pgkeel, as a superuser (or
-- the database owner):  pgkeel commit-outcome-sql | psql -d DATABASE
-- Safe to run again. Each write transaction's COMMIT is preceded by a call
-- of pgkeel.commit_token(random uuid) in the same transaction, and each
-- autocommit INSERT/UPDATE/DELETE/MERGE is followed by one of
-- pgkeel.commit_token_strict in the same query; if the server dies while
-- committing, pgkeel asks the new primary whether the token is there, i.e.
-- whether the transaction committed.
CREATE SCHEMA IF NOT EXISTS pgkeel;
CREATE TABLE IF NOT EXISTS pgkeel.commit_tokens (
    token uuid PRIMARY KEY,
    at timestamptz NOT NULL DEFAULT now()
);

-- Records a token in the calling transaction, if it wrote anything (else
-- false: nothing for its COMMIT to lose). No error is caught: if the
-- transaction commits, its token does too.
CREATE OR REPLACE FUNCTION pgkeel.commit_token(t uuid) RETURNS boolean
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF pg_current_xact_id_if_assigned() IS NULL THEN
        RETURN false;
    END IF;
    INSERT INTO pgkeel.commit_tokens (token) VALUES (t);
    RETURN true;
END $$;

-- The same for an autocommit write pgkeel sends with it in one query (one
-- implicit transaction): no error is caught, so that if the write commits,
-- its token does too.
CREATE OR REPLACE FUNCTION pgkeel.commit_token_strict(t uuid) RETURNS boolean
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    INSERT INTO pgkeel.commit_tokens (token) VALUES (t) RETURNING true
$$;

-- Whether the transaction that recorded token t committed.
CREATE OR REPLACE FUNCTION pgkeel.commit_token_known(t uuid) RETURNS boolean
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM pgkeel.commit_tokens WHERE token = t)
$$;

-- Forgets tokens older than an hour (long after any failover was resolved);
-- pgkeel calls it now and then. No parameter: nobody can forget a recent one.
CREATE OR REPLACE FUNCTION pgkeel.commit_tokens_expire() RETURNS bigint
LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
    WITH gone AS (
        DELETE FROM pgkeel.commit_tokens WHERE at < now() - interval '1 hour' RETURNING 1
    )
    SELECT count(*) FROM gone
$$;

REVOKE ALL ON SCHEMA pgkeel FROM PUBLIC;
GRANT USAGE ON SCHEMA pgkeel TO PUBLIC;
REVOKE ALL ON pgkeel.commit_tokens FROM PUBLIC;
REVOKE ALL ON FUNCTION pgkeel.commit_token(uuid), pgkeel.commit_token_strict(uuid),
    pgkeel.commit_token_known(uuid), pgkeel.commit_tokens_expire() FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgkeel.commit_token(uuid), pgkeel.commit_token_strict(uuid),
    pgkeel.commit_token_known(uuid), pgkeel.commit_tokens_expire() TO PUBLIC;
