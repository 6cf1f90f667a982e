//! `ferry outbox …` and `ferry dlq …`: the operator's view of outbound delivery, straight on the
//! configured store (a running Ferry picks changes up at its next poll).

use std::path::PathBuf;

use anyhow::Context;
use clap::Subcommand;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use ferry::config::Settings;
use ferry::delivery::Router;
use ferry::delivery::ops::{ReplayRequest, parse_age, replay};
use ferry::store::DynStore;
use ferry::store::outbox::DlqFilter;

#[derive(Subcommand)]
pub enum OutboxCommand {
    /// Depth and oldest pending age per destination, with the deepest lanes.
    Status {
        #[arg(long)]
        config: Option<PathBuf>,
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Queue stored events again for a destination (e.g. to load a new PACS), through that
    /// destination's subscriptions: a time range, or one stream.
    Replay {
        #[arg(long)]
        config: Option<PathBuf>,
        #[arg(long)]
        destination: String,
        /// Events recorded at or after this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        from: Option<OffsetDateTime>,
        /// Events recorded before this time (RFC 3339).
        #[arg(long, value_parser = parse_time)]
        to: Option<OffsetDateTime>,
        /// Only this stream (needs --hospital-id).
        #[arg(long)]
        stream: Option<String>,
        #[arg(long)]
        hospital_id: Option<String>,
    },
}

#[derive(Subcommand)]
pub enum DlqCommand {
    /// Dead letters, oldest first.
    List {
        #[command(flatten)]
        select: Select,
        #[arg(long, default_value_t = 100)]
        limit: i64,
        #[arg(long)]
        json: bool,
    },
    /// One dead letter, with the receiver's last answer.
    Show {
        id: i64,
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Put dead letters back in their lanes (attempts start again).
    Retry {
        #[command(flatten)]
        select: Select,
    },
    /// Give up on dead letters (kept, marked discarded); their lanes move on.
    Discard {
        #[command(flatten)]
        select: Select,
    },
}

/// Which dead letters.
#[derive(clap::Args)]
pub struct Select {
    #[arg(long)]
    config: Option<PathBuf>,
    /// One dead letter by id.
    id: Option<i64>,
    #[arg(long)]
    destination: Option<String>,
    /// Dead-lettered longer ago than this: 90s, 15m, 2h, 3d.
    #[arg(long, value_parser = parse_age_arg)]
    older_than: Option<std::time::Duration>,
    /// Every dead letter (retry and discard refuse to act on everything without it).
    #[arg(long)]
    all: bool,
}

impl Select {
    fn filter(&self) -> DlqFilter {
        DlqFilter {
            id: self.id,
            destination: self.destination.clone(),
            dead_before: self.older_than.map(|age| OffsetDateTime::now_utc() - age),
            hospital_id: None,
            limit: None,
        }
    }
}

fn parse_time(text: &str) -> Result<OffsetDateTime, String> {
    OffsetDateTime::parse(text, &Rfc3339).map_err(|e| format!("not an RFC 3339 time: {e}"))
}

fn parse_age_arg(text: &str) -> Result<std::time::Duration, String> {
    parse_age(text).ok_or_else(|| "expected e.g. 90s, 15m, 2h or 3d".to_string())
}

async fn open(config: Option<&std::path::Path>) -> anyhow::Result<(Settings, DynStore)> {
    let settings = Settings::load(config)?;
    ferry::telemetry::init(&settings.log);
    // No migration: these commands run beside a live Ferry, which migrated at its start; taking
    // the migration lock here would only compete with its commits.
    let store = ferry::store::connect(
        &settings.store.url,
        &ferry::store::ConnectOptions {
            max_connections: 2,
            ..ferry::store::ConnectOptions::default()
        },
    )
    .await
    .context("cannot open the store")?;
    Ok((settings, store))
}

fn age(since: Option<OffsetDateTime>) -> String {
    let Some(t) = since else {
        return "-".into();
    };
    let secs = (OffsetDateTime::now_utc() - t).whole_seconds().max(0);
    match secs {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86_400),
    }
}

pub async fn outbox(what: OutboxCommand) -> anyhow::Result<std::process::ExitCode> {
    match what {
        OutboxCommand::Status { config, json } => {
            let (settings, store) = open(config.as_deref()).await?;
            let status = store.outbox().outbox_status().await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
                return Ok(std::process::ExitCode::SUCCESS);
            }
            println!(
                "{:<20} {:>9} {:>6} {:>8}",
                "destination", "pending", "dead", "oldest"
            );
            for d in settings.destinations.iter().map(|d| d.name()) {
                if !status.iter().any(|s| s.destination == d) {
                    println!("{d:<20} {:>9} {:>6} {:>8}", 0, 0, "-");
                }
            }
            for s in &status {
                println!(
                    "{:<20} {:>9} {:>6} {:>8}",
                    s.destination,
                    s.pending,
                    s.dead,
                    age(s.oldest_pending_at)
                );
                for l in &s.lanes {
                    println!(
                        "  lane {:<44} {:>7} {:>6} {:>8}  {}",
                        l.lane,
                        l.pending,
                        l.dead,
                        age(l.oldest_at),
                        if l.dead > 0 {
                            "blocked by a dead letter".to_owned()
                        } else {
                            l.lease_owner
                                .as_deref()
                                .map(|o| format!("delivering on {o}"))
                                .unwrap_or_default()
                        }
                    );
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        OutboxCommand::Replay {
            config,
            destination,
            from,
            to,
            stream,
            hospital_id,
        } => {
            let (settings, store) = open(config.as_deref()).await?;
            let router = Router::new(&settings.destinations, &settings.subscriptions);
            let request = ReplayRequest {
                destination,
                from,
                to,
                stream,
                hospital_id,
            };
            let queued = replay(&store, &router, &request).await?;
            println!(
                "ferry: {queued} message(s) queued for {}",
                request.destination
            );
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

pub async fn dlq(what: DlqCommand) -> anyhow::Result<std::process::ExitCode> {
    let now = OffsetDateTime::now_utc();
    match what {
        DlqCommand::List {
            select,
            limit,
            json,
        } => {
            let (_, store) = open(select.config.as_deref()).await?;
            let mut f = select.filter();
            f.limit = Some(limit);
            let items = store.outbox().dlq_list(&f).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&items)?);
            } else {
                println!(
                    "{:>8}  {:<14} {:<20} {:>8} {:>8}  reason",
                    "id", "destination", "event", "attempts", "dead for"
                );
                for d in &items {
                    println!(
                        "{:>8}  {:<14} {:<20} {:>8} {:>8}  {}",
                        d.id,
                        d.destination,
                        d.event_type,
                        d.attempts,
                        age(d.dead_at),
                        d.last_error.as_deref().unwrap_or("")
                    );
                }
            }
            Ok(std::process::ExitCode::SUCCESS)
        }
        DlqCommand::Show { id, config } => {
            let (_, store) = open(config.as_deref()).await?;
            let f = DlqFilter {
                id: Some(id),
                ..DlqFilter::default()
            };
            match store.outbox().dlq_list(&f).await?.into_iter().next() {
                Some(d) => {
                    println!("{}", serde_json::to_string_pretty(&d)?);
                    Ok(std::process::ExitCode::SUCCESS)
                }
                None => {
                    eprintln!("ferry: no dead letter {id}");
                    Ok(std::process::ExitCode::FAILURE)
                }
            }
        }
        DlqCommand::Retry { select } => {
            refuse_unbounded(&select)?;
            let (_, store) = open(select.config.as_deref()).await?;
            let n = store.outbox().dlq_retry(&select.filter(), now).await?;
            println!("ferry: {n} dead letter(s) put back in their lanes");
            Ok(std::process::ExitCode::SUCCESS)
        }
        DlqCommand::Discard { select } => {
            refuse_unbounded(&select)?;
            let (_, store) = open(select.config.as_deref()).await?;
            let n = store.outbox().dlq_discard(&select.filter(), now).await?;
            println!("ferry: {n} dead letter(s) discarded");
            Ok(std::process::ExitCode::SUCCESS)
        }
    }
}

/// Retry and discard act on everything only with `--all`: one slip must not resend or drop the
/// whole queue.
fn refuse_unbounded(select: &Select) -> anyhow::Result<()> {
    if !select.all && select.filter().is_unrestricted() {
        anyhow::bail!("say which dead letters: an id, --destination, --older-than, or --all");
    }
    Ok(())
}
