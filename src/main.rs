//! The `pgkeel` command.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use pgkeel::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

/// A PostgreSQL proxy and pooler that keeps clients connected through failover.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Cli {
    /// Configuration file.
    #[arg(short, long, default_value = "config.toml")]
    config: PathBuf,
    /// Validate FILE and exit (0 when valid).
    #[arg(long, value_name = "FILE")]
    check_config: Option<PathBuf>,
    /// Take over from the pgkeel process running with this configuration
    /// (found on its handover socket): its listening sockets, then its idle
    /// clients; it exits once they have moved or finished.
    #[arg(long)]
    takeover: bool,
    #[command(subcommand)]
    import: Option<Command>,
}

/// Print something and exit: a pgkeel configuration made from another
/// tool's (with the settings that have no counterpart listed at its end),
/// or SQL pgkeel needs installed.
#[derive(clap::Subcommand, Debug)]
enum Command {
    /// From pgbouncer.ini (and its userlist.txt, for [[users]]).
    ImportPgbouncer {
        ini: PathBuf,
        userlist: Option<PathBuf>,
    },
    /// From haproxy.cfg (Patroni's template: primary and replica listens).
    ImportHaproxy { cfg: PathBuf },
    /// The SQL that installs commit tokens (`[failover] commit_outcome =
    /// "token"`), to run in every database: `pgkeel commit-outcome-sql |
    /// psql -d DATABASE`.
    CommitOutcomeSql,
}

fn read(path: &PathBuf) -> Result<String, ExitCode> {
    std::fs::read_to_string(path).map_err(|e| {
        eprintln!("pgkeel: cannot read {}: {e}", path.display());
        ExitCode::from(2)
    })
}

fn import(cmd: &Command) -> Result<String, ExitCode> {
    Ok(match cmd {
        Command::ImportPgbouncer { ini, userlist } => {
            let users = userlist.as_ref().map(read).transpose()?;
            pgkeel::import::pgbouncer::import(&read(ini)?, users.as_deref())
                .render(&ini.display().to_string())
        }
        Command::ImportHaproxy { cfg } => {
            pgkeel::import::haproxy::import(&read(cfg)?).render(&cfg.display().to_string())
        }
        Command::CommitOutcomeSql => pgkeel::commit_token::SQL.to_owned(),
    })
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    if let Some(cmd) = &cli.import {
        return match import(cmd) {
            Ok(toml) => {
                print!("{toml}");
                ExitCode::SUCCESS
            }
            Err(code) => code,
        };
    }
    if let Some(path) = cli.check_config {
        // The certificates and keys `[tls]` names are read too.
        let checked = Config::from_file(&path).and_then(|c| {
            pgkeel::tls::Tls::build(&c.tls)
                .map(|_| c)
                .map_err(|message| pgkeel::config::ConfigError {
                    key: Some("tls".into()),
                    line: None,
                    message,
                })
        });
        return match checked {
            Ok(_) => {
                println!("{}: configuration is valid", path.display());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{}: {e}", path.display());
                ExitCode::from(2)
            }
        };
    }
    let config = match Config::from_file(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!(
                "pgkeel: invalid configuration {}: {e}",
                cli.config.display()
            );
            return ExitCode::from(2);
        }
    };
    let filter =
        EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&config.log.level));
    // Colours only on a terminal: in a file or a journal they are noise
    // in every line.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stdout()));
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    let mut runtime = tokio::runtime::Builder::new_multi_thread();
    if config.proxy.worker_threads > 0 {
        runtime.worker_threads(config.proxy.worker_threads as usize);
    }
    let runtime = match runtime.enable_all().build() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("pgkeel: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        let takeover = if cli.takeover {
            let Some(path) = pgkeel::handover::socket_path(&config) else {
                tracing::error!("--takeover needs a handover socket: [proxy] handover_socket is \"off\", or empty with listen port 0");
                return ExitCode::FAILURE;
            };
            match pgkeel::handover::Takeover::connect(&path).await {
                Ok(t) => Some(t),
                Err(e) => {
                    tracing::error!("{e:#}");
                    return ExitCode::FAILURE;
                }
            }
        } else {
            None
        };
        let handle = match pgkeel::Proxy::start_with(config, takeover).await {
            Ok(h) => h,
            Err(e) => {
                tracing::error!("{e:#}");
                return ExitCode::FAILURE;
            }
        };
        // Edits to the file, and SIGHUP, reload it without a restart.
        handle.watch_config(cli.config.clone());
        // A signal, or the admin console's SHUTDOWN.
        tokio::select! {
            _ = wait_for_signal() => {}
            _ = handle.stop_requested() => {}
        }
        tracing::info!("shutting down");
        handle.shutdown().await;
        ExitCode::SUCCESS
    })
}

async fn wait_for_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
