//! The `authgate` command line: serve | check | token | revoke | echo.
//! The binary (`main.rs`) only picks the allocator and calls [`main`].

use crate::{config, echo, server, token};
use clap::{Parser, Subcommand};
use std::process::ExitCode;

#[derive(Parser)]
#[command(name = "authgate", version, about = "Edge authentication gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (proxy listener + admin listener) in the foreground.
    Serve {
        #[arg(long, default_value = "gateway.toml")]
        config: String,
    },
    /// Validate the config: exit 0 with a summary, or 2 with every error.
    Check {
        #[arg(long, default_value = "gateway.toml")]
        config: String,
    },
    /// Print a signed JWT for an issuer whose signing key is configured.
    Token {
        #[arg(long, default_value = "gateway.toml")]
        config: String,
        #[arg(long)]
        issuer: String,
        #[arg(long)]
        sub: String,
        /// Extra claim `k=v` (v is JSON when it parses, else a string); repeatable.
        #[arg(long = "claim")]
        claims: Vec<String>,
        /// Lifetime, e.g. 15m.
        #[arg(long, default_value = "15m")]
        ttl: String,
        /// The `kid` header (default: the issuer's only kid, if it has one).
        #[arg(long)]
        kid: Option<String>,
    },
    /// Revoke a token (--jti with --exp), every token of a subject (--sub,
    /// optionally --iss), or a session (--session) through a running
    /// gateway's admin API.
    Revoke {
        #[arg(long, conflicts_with_all = ["sub", "session"], requires = "exp", allow_hyphen_values = true)]
        jti: Option<String>,
        /// The revoked token's exp (unix seconds): it is forgotten after that.
        #[arg(long)]
        exp: Option<i64>,
        #[arg(long, conflicts_with = "session", allow_hyphen_values = true)]
        sub: Option<String>,
        /// Narrow a --sub revocation to one issuer (its config name).
        #[arg(long, requires = "sub")]
        iss: Option<String>,
        #[arg(long, allow_hyphen_values = true)]
        session: Option<String>,
        #[arg(
            long,
            env = "AUTHGATE_ADMIN_URL",
            default_value = "http://127.0.0.1:9090"
        )]
        admin_url: String,
        #[arg(long, env = "AUTHGATE_ADMIN_TOKEN", hide_env_values = true)]
        token: String,
    },
    /// Run a demo backend that echoes each request as JSON (for the quick start).
    Echo {
        #[arg(long, default_value = "127.0.0.1:3000")]
        listen: String,
    },
}

/// JSON logs on stdout, written by a background thread so a request never
/// waits on the stdout lock (blocking, not dropping, if it falls behind).
/// The guard flushes what is still queued when `serve` returns.
///
/// The thread writes through a 64 KiB buffer: it takes every queued line,
/// then flushes once the queue is empty, so under load one `write` carries
/// many lines (stdout alone is line-buffered: a `write` per line), and an
/// idle gateway's lines still go out at once.
fn init_logs() -> tracing_appender::non_blocking::WorkerGuard {
    let stdout = std::io::BufWriter::with_capacity(64 * 1024, std::io::stdout());
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(stdout);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .event_format(crate::log_format::JsonLines)
        .with_env_filter(filter)
        .with_writer(writer)
        .try_init();
    guard
}

/// Parses the command line and runs it.
pub fn main() -> ExitCode {
    // One TLS crypto provider for every rustls user (listener, upstreams,
    // Redis): set before anything builds a TLS config.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Check { config } => match config::load(&config) {
            Ok(rt) => {
                println!("{}: {}", config, rt.summary());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::from(2)
            }
        },
        Command::Serve { config } => {
            let _logs = init_logs();
            let rt = match config::load(&config) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            match server::run(rt, config) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("authgate: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Token {
            config,
            issuer,
            sub,
            claims,
            ttl,
            kid,
        } => {
            let rt = match config::load(&config) {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("{e}");
                    return ExitCode::from(2);
                }
            };
            let Some(iss) = rt.issuer(&issuer) else {
                eprintln!("authgate: no issuer named `{issuer}` in {config}");
                return ExitCode::from(2);
            };
            let ttl = match crate::config::compile::duration(&ttl) {
                Ok(d) => d.as_secs() as i64,
                Err(e) => {
                    eprintln!("authgate: --ttl `{ttl}`: {e}");
                    return ExitCode::from(2);
                }
            };
            let now = crate::clock::now_unix();
            match token::mint(iss, &sub, &claims, ttl, kid.as_deref(), now) {
                Ok(t) => {
                    println!("{t}");
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("authgate: {e}");
                    ExitCode::from(2)
                }
            }
        }
        Command::Revoke {
            jti,
            exp,
            sub,
            iss,
            session,
            admin_url,
            token,
        } => {
            let body = serde_json::json!({"jti": jti, "exp": exp, "sub": sub, "iss": iss, "session": session});
            let body = match body {
                serde_json::Value::Object(m) => {
                    serde_json::Value::Object(m.into_iter().filter(|(_, v)| !v.is_null()).collect())
                }
                other => other,
            };
            if body.as_object().is_some_and(|m| m.is_empty()) {
                eprintln!("authgate revoke: give --jti (with --exp), --sub or --session");
                return ExitCode::from(2);
            }
            match crate::admin_client::post_json(
                &admin_url,
                &token,
                "/admin/revoke",
                &body.to_string(),
            ) {
                Ok((200, out)) => {
                    println!("{}", out.trim());
                    ExitCode::SUCCESS
                }
                Ok((status, out)) => {
                    eprintln!("authgate revoke: {status} {}", out.trim());
                    ExitCode::from(1)
                }
                Err(e) => {
                    eprintln!("authgate revoke: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Echo { listen } => match echo::serve(&listen) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("authgate echo: {e}");
                ExitCode::from(1)
            }
        },
    }
}
