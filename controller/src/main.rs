//! `fleet-controller`: serve the fleet, and provision users and tokens without a browser.

use std::io::Read;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use fleet_controller::config::ControllerConfig;
use fleet_controller::db::{Db, Role};
use fleet_controller::server;
use fleet_controller::tokens;
use fleet_logging::{Console, LokiSetup};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    name = "fleet-controller",
    version,
    about = "The Fleet controller: enrollment, check-in, wave rollouts, emergency stop"
)]
struct Cli {
    /// Configuration file (YAML); without it the defaults apply.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// `sqlite://PATH` or `postgres://USER:PASSWORD@HOST/DB`; overrides the file.
    #[arg(long, global = true, env = "FLEET_DATABASE_URL")]
    database_url: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controller.
    Serve {
        /// Listen address; overrides the file.
        #[arg(long)]
        listen: Option<std::net::SocketAddr>,
    },
    /// Check the configuration file and exit.
    CheckConfig,
    /// Users.
    Users {
        #[command(subcommand)]
        command: UsersCommand,
    },
    /// API tokens for fleetctl.
    Tokens {
        #[command(subcommand)]
        command: TokensCommand,
    },
    /// Bootstrap tokens, for provisioning devices in bulk without approval.
    BootstrapToken {
        #[command(subcommand)]
        command: BootstrapCommand,
    },
    /// The alert notifiers of `alerting:` in the configuration.
    Notifiers {
        #[command(subcommand)]
        command: NotifiersCommand,
    },
}

#[derive(Subcommand)]
enum NotifiersCommand {
    /// Send a test message through every notifier (or one); one line per notifier; exit 1 if
    /// any did not deliver.
    Test {
        /// Only this notifier.
        #[arg(long)]
        name: Option<String>,
        /// The fleet name the message shows.
        #[arg(long, default_value = "test")]
        fleet: String,
    },
}

#[derive(Subcommand)]
enum UsersCommand {
    /// Add a user (or reset an existing one); prints the password (if generated) and an API token.
    Add {
        /// Login name.
        name: String,
        /// admin, operator or viewer.
        #[arg(long)]
        role: String,
        /// Read the password from stdin instead of generating one.
        #[arg(long)]
        password_stdin: bool,
    },
    /// List users.
    List,
}

#[derive(Subcommand)]
enum TokensCommand {
    /// Create an API token for a user and print it.
    Create {
        /// The user.
        name: String,
    },
    /// Revoke every API token of a user.
    Revoke {
        /// The user.
        name: String,
    },
}

#[derive(Subcommand)]
enum BootstrapCommand {
    /// Create a bootstrap token; prints the secret alone on stdout (shown once), what it may do
    /// on stderr.
    Create {
        /// How long it lives (at most 90d).
        #[arg(long, default_value = "24h")]
        expires_in: String,
        /// At most this many enrollments.
        #[arg(long)]
        max_uses: Option<i64>,
        /// Only devices whose labels in devices.yaml match, e.g. `site=berlin,ring=canary`.
        #[arg(long, default_value = "")]
        selector: String,
        /// What it is for, shown in listings.
        #[arg(long, default_value = "")]
        note: String,
    },
    /// List bootstrap tokens (id, status, expiry, uses, selector, note; never the secrets).
    List,
    /// Revoke a bootstrap token by its id (from `list`).
    Revoke {
        /// The token's id.
        id: String,
        /// Why (audit log).
        #[arg(long, default_value = "")]
        reason: String,
    },
}

/// A failure with its exit code: 2 for usage and configuration, 1 for everything else.
struct Failure(u8, String);

fn main() -> ExitCode {
    let cli = Cli::parse();
    let cfg = match load_config(&cli) {
        Ok(cfg) => cfg,
        Err(Failure(code, message)) => {
            eprintln!("fleet-controller: {message}");
            return ExitCode::from(code);
        }
    };
    // Loki for the server only: the other commands are a person at a terminal. Its streams are
    // labelled with the host name, stable across restarts (the replica id changes at each).
    let loki = match (&cli.command, &cfg.logging.loki) {
        (Command::Serve { .. }, Some(loki)) => Some(LokiSetup::new(
            loki.clone(),
            "controller",
            fleet_logging::host_name(),
        )),
        _ => None,
    };
    let mut logging = fleet_logging::init(Console::Stderr, loki);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("fleet-controller: cannot start the runtime: {e}");
            return ExitCode::from(1);
        }
    };
    let result = runtime.block_on(async {
        let shipping = logging.start();
        let result = run(cli, cfg, logging.stats()).await;
        // What is queued for Loki goes out before the process ends, within a short deadline.
        shipping.finish().await;
        result
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(Failure(code, message)) => {
            eprintln!("fleet-controller: {message}");
            ExitCode::from(code)
        }
    }
}

fn load_config(cli: &Cli) -> Result<ControllerConfig, Failure> {
    let mut cfg = match &cli.config {
        Some(p) => ControllerConfig::load(p).map_err(|e| Failure(2, e.to_string()))?,
        None => ControllerConfig::default(),
    };
    if let Some(url) = &cli.database_url {
        cfg.database_url = Some(url.clone());
    }
    Ok(cfg)
}

async fn open_db(cfg: &ControllerConfig) -> Result<Db, Failure> {
    std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
        Failure(
            1,
            format!(
                "cannot create the data directory {}: {e}",
                cfg.data_dir.display()
            ),
        )
    })?;
    Db::open(&cfg.database_url())
        .await
        .map_err(|e| Failure(1, e.to_string()))
}

async fn run(
    cli: Cli,
    mut cfg: ControllerConfig,
    loki: Option<std::sync::Arc<fleet_logging::ShipStats>>,
) -> Result<(), Failure> {
    match cli.command {
        Command::CheckConfig => {
            println!(
                "configuration OK: listen {}, database {}, {} notifier(s), {} alert route(s){}",
                cfg.listen,
                fleet_controller::db::redact(&cfg.database_url()),
                cfg.alerting.notifiers.len(),
                cfg.alerting.routes.len(),
                cfg.logging
                    .loki
                    .as_ref()
                    .map(|l| format!(", logs pushed to Loki at {}", l.push_url()))
                    .unwrap_or_default()
            );
            Ok(())
        }
        Command::Notifiers {
            command: NotifiersCommand::Test { name, fleet },
        } => notifiers_test(&cfg, name.as_deref(), &fleet).await,
        Command::Serve { listen } => {
            if let Some(l) = listen {
                cfg.listen = l;
            }
            let state = server::prepare(cfg)
                .await
                .map_err(|e| Failure(1, e.to_string()))?;
            if let Some(stats) = loki {
                state.metrics.set_loki(stats);
            }
            let shutdown = CancellationToken::new();
            let s = shutdown.clone();
            tokio::spawn(async move {
                let mut term =
                    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                    {
                        Ok(t) => t,
                        Err(_) => return,
                    };
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
                tracing::info!("shutting down");
                s.cancel();
            });
            server::serve(state, shutdown)
                .await
                .map_err(|e| Failure(1, e.to_string()))
        }
        Command::Users { command } => {
            let db = open_db(&cfg).await?;
            match command {
                UsersCommand::Add {
                    name,
                    role,
                    password_stdin,
                } => {
                    let role: Role = role.parse().map_err(|e: String| Failure(2, e))?;
                    fleet_config::names::check_name(&name)
                        .map_err(|e| Failure(2, format!("user name {e}")))?;
                    let (password, generated) = if password_stdin {
                        let mut s = String::new();
                        std::io::stdin()
                            .read_to_string(&mut s)
                            .map_err(|e| Failure(1, format!("cannot read the password: {e}")))?;
                        (s.trim_end_matches(['\n', '\r']).to_owned(), false)
                    } else {
                        (tokens::random_password(), true)
                    };
                    let hash =
                        tokens::hash_password(&password).map_err(|e| Failure(2, e.to_string()))?;
                    db.upsert_user(&name, &hash, role)
                        .await
                        .map_err(|e| Failure(1, e.to_string()))?;
                    let token = db
                        .create_api_token(&name)
                        .await
                        .map_err(|e| Failure(1, e.to_string()))?;
                    db.audit("fleet-controller", "user.add", &name, "", role.as_str())
                        .await
                        .map_err(|e| Failure(1, e.to_string()))?;
                    println!("user={name}");
                    println!("role={role}");
                    if generated {
                        println!("password={password}");
                    }
                    println!("token={token}");
                    Ok(())
                }
                UsersCommand::List => {
                    for u in db.users().await.map_err(|e| Failure(1, e.to_string()))? {
                        println!("{}\t{}", u.name, u.role);
                    }
                    Ok(())
                }
            }
        }
        Command::Tokens { command } => {
            let db = open_db(&cfg).await?;
            match command {
                TokensCommand::Create { name } => {
                    if db
                        .user_with_password(&name)
                        .await
                        .map_err(|e| Failure(1, e.to_string()))?
                        .is_none()
                    {
                        return Err(Failure(1, format!("no user `{name}`; add it with `fleet-controller users add {name} --role ROLE`")));
                    }
                    let token = db
                        .create_api_token(&name)
                        .await
                        .map_err(|e| Failure(1, e.to_string()))?;
                    db.audit("fleet-controller", "token.create", &name, "", "")
                        .await
                        .map_err(|e| Failure(1, e.to_string()))?;
                    println!("{token}");
                    Ok(())
                }
                TokensCommand::Revoke { name } => {
                    let n = db
                        .revoke_api_tokens(&name)
                        .await
                        .map_err(|e| Failure(1, e.to_string()))?;
                    db.audit(
                        "fleet-controller",
                        "token.revoke",
                        &name,
                        "",
                        &n.to_string(),
                    )
                    .await
                    .map_err(|e| Failure(1, e.to_string()))?;
                    println!("revoked {n} token(s) of `{name}`");
                    Ok(())
                }
            }
        }
        Command::BootstrapToken { command } => {
            let db = open_db(&cfg).await?;
            bootstrap_token(&db, command).await
        }
    }
}

/// `notifiers test`: the test message through each selected notifier, one line each.
async fn notifiers_test(
    cfg: &ControllerConfig,
    only: Option<&str>,
    fleet: &str,
) -> Result<(), Failure> {
    use fleet_controller::notify::registry::{self, Registry, RegistryError};
    let reg = Registry::new(&cfg.alerting).map_err(|e| Failure(1, e.to_string()))?;
    let chosen = reg.select(only).map_err(|e| match e {
        RegistryError::UnknownNotifier { .. } => Failure(2, e.to_string()),
        _ => Failure(1, e.to_string()),
    })?;
    let message = reg.test_message(fleet, fleet_controller::db::now_ms());
    let outcomes = registry::send_each(&chosen, &message).await;
    for o in &outcomes {
        println!("{o}");
    }
    let failed = outcomes.iter().filter(|o| o.result.is_err()).count();
    if failed > 0 {
        return Err(Failure(
            1,
            format!("{failed} of {} notifier(s) did not deliver", outcomes.len()),
        ));
    }
    Ok(())
}

async fn bootstrap_token(db: &Db, command: BootstrapCommand) -> Result<(), Failure> {
    use fleet_controller::service::bootstrap;
    let now = fleet_controller::db::now_ms();
    let fail = |e: fleet_controller::service::ServiceError| {
        let code = match e {
            fleet_controller::service::ServiceError::Db(_) => 1,
            _ => 2,
        };
        Failure(code, e.to_string())
    };
    match command {
        BootstrapCommand::Create {
            expires_in,
            max_uses,
            selector,
            note,
        } => {
            let ttl = fleet_config::units::parse_duration(&expires_in)
                .map_err(|e| Failure(2, format!("--expires-in: {e}")))?;
            let new = fleet_controller::db::NewBootstrapToken {
                note,
                ttl_ms: i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX),
                max_uses,
                selector: bootstrap::parse_selector(&selector).map_err(fail)?,
            };
            let (secret, t) = bootstrap::create_in(db, "fleet-controller", &new, now)
                .await
                .map_err(fail)?;
            eprintln!(
                "bootstrap token {}: expires {}, max uses {}, enrolls {}; it never replaces an enrolled device",
                t.id,
                fleet_controller::timefmt::utc(t.expires_ms),
                t.max_uses.map_or_else(|| "unlimited".to_owned(), |n| n.to_string()),
                t.selector_text()
            );
            println!("{secret}");
            Ok(())
        }
        BootstrapCommand::List => {
            let list = db
                .bootstrap_tokens()
                .await
                .map_err(|e| Failure(1, e.to_string()))?;
            println!("ID\tSTATUS\tEXPIRES\tUSES\tSELECTOR\tNOTE");
            for t in list {
                let status = match t.unusable(now) {
                    None => "live",
                    Some(fleet_controller::db::Unusable::Revoked(_)) => "revoked",
                    Some(fleet_controller::db::Unusable::Expired(_)) => "expired",
                    Some(fleet_controller::db::Unusable::UsedUp(_)) => "used_up",
                };
                println!(
                    "{}\t{status}\t{}\t{}/{}\t{}\t{}",
                    t.id,
                    fleet_controller::timefmt::utc(t.expires_ms),
                    t.uses,
                    t.max_uses.map_or_else(|| "-".to_owned(), |n| n.to_string()),
                    t.selector_text(),
                    t.note
                );
            }
            Ok(())
        }
        BootstrapCommand::Revoke { id, reason } => {
            let was = bootstrap::revoke_in(db, "fleet-controller", &id, &reason, now)
                .await
                .map_err(fail)?;
            if was {
                println!("revoked bootstrap token {id}");
            } else {
                println!("bootstrap token {id} was revoked already");
            }
            Ok(())
        }
    }
}
