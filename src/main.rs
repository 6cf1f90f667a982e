//! The `ferry` command: parse the command line, load settings, start logging, run the command.

use std::io::Write as _;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context as _;

mod outbox_cli;
use clap::{Parser, Subcommand};

use ferry::app::App;
use ferry::config::Settings;
use ferry::hl7::ack::{AckCode, expects_accept_ack, summarize_ack};
use ferry::loadgen;
use ferry::mapping::{Mapped, MappingSet};
use ferry::mllp::client::{MllpClient, split_messages};

/// mimalloc instead of the system allocator: see the note on the dependency in Cargo.toml.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "ferry", version, about = "HL7 v2 / FHIR integration gateway")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the gateway (MLLP and HTTP listeners) until SIGTERM or ctrl-c.
    Serve {
        /// TOML configuration file; without it, embedded defaults (SQLite under ./ferry-data/).
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Apply database migrations and exit.
    Migrate {
        #[arg(long)]
        config: Option<PathBuf>,
    },
    /// Send HL7 v2 messages over MLLP and print each ACK; exits non-zero on any NAK.
    Send {
        /// Files with one message each, or several (batch envelopes are dropped).
        #[arg(required = true)]
        files: Vec<PathBuf>,
        /// Receiver address, HOST:PORT.
        #[arg(long)]
        to: String,
        /// Seconds to wait for each ACK.
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
    },
    /// Check, test and document the mapping files.
    Mappings {
        #[command(subcommand)]
        what: MappingsCommand,
    },
    /// Map one HL7 v2 message file (or a FHIR resource, JSON) with the mappings and print the
    /// events it produces; with `--outbound`, render a stored event (JSON) for a destination.
    Map {
        /// The message file (any MSH-18 character set), or a FHIR Patient or ServiceRequest; with
        /// `--outbound`, an event file (`{event, stream, payload}` or an array of them).
        file: PathBuf,
        /// Render the event through this outbound mapping, e.g. `outbound/pacs_orm_o01`.
        #[arg(long)]
        outbound: Option<String>,
        /// With `--outbound`: which event of an array (0-based).
        #[arg(long, default_value_t = 0)]
        index: usize,
        /// With `--outbound`: the delivery id (MSH-10).
        #[arg(long, default_value = "1")]
        delivery_id: String,
        /// With `--outbound`: the event's recorded time (MSH-7), RFC 3339.
        #[arg(long, default_value = "2026-11-03T15:30:00+01:00")]
        recorded_at: String,
        /// Show, for every output field, the rule, the source path and the raw value.
        #[arg(long)]
        explain: bool,
        /// For a FHIR resource: the interaction it arrives with (create or update).
        #[arg(long, default_value = "create", value_parser = ["create", "update"])]
        interaction: String,
        /// The mappings folder.
        #[arg(long, env = "FERRY_MAPPINGS_DIR", default_value = "mappings")]
        mappings: PathBuf,
    },
    /// Maintain the FHIR read models.
    Projections {
        #[command(subcommand)]
        what: ProjectionsCommand,
    },
    /// Outbound delivery: queue depth, replay.
    Outbox {
        #[command(subcommand)]
        what: outbox_cli::OutboxCommand,
    },
    /// The dead-letter queue of outbound delivery: list, show, retry, discard.
    Dlq {
        #[command(subcommand)]
        what: outbox_cli::DlqCommand,
    },
    /// Load generators.
    Bench {
        #[command(subcommand)]
        what: BenchCommand,
    },
}

#[derive(Subcommand)]
enum MappingsCommand {
    /// Load every mapping file and report every problem (file:line:column), exit 1 if any.
    Check {
        #[arg(env = "FERRY_MAPPINGS_DIR", default_value = "mappings")]
        dir: PathBuf,
    },
    /// Run every example listed in the mapping files; print a diff for each failure, exit 1 if any.
    Test {
        #[arg(env = "FERRY_MAPPINGS_DIR", default_value = "mappings")]
        dir: PathBuf,
    },
    /// Print (or write) the JSON Schema of mapping files, for editors with a YAML language server.
    Schema {
        /// Write to this file instead of stdout.
        #[arg(long)]
        output: Option<PathBuf>,
        /// The schema of the domain events (the catalogue) instead.
        #[arg(long)]
        events: bool,
    },
}

#[derive(Subcommand)]
enum ProjectionsCommand {
    /// Replay every event of the store into fresh read models, in one transaction (FHIR reads see
    /// the old ones until it commits; on PostgreSQL, ingest waits for it).
    Rebuild {
        #[arg(long)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum BenchCommand {
    /// Send messages over N MLLP connections, check every ACK, report throughput and latency.
    Mllp {
        #[arg(long)]
        to: String,
        #[arg(long, default_value_t = 8)]
        connections: usize,
        #[arg(long, default_value_t = 10_000)]
        messages: usize,
        /// Folder (or file) of HL7 v2 messages to use as templates; default: a synthetic ADT^A01.
        #[arg(long)]
        corpus: Option<PathBuf>,
        #[arg(long, default_value_t = 30)]
        timeout_secs: u64,
        /// A number in the templates replaced by number + message index in every message (the
        /// synthetic A01's MRN and visit number are 900001): fills a store with that many
        /// distinct patients.
        #[arg(long)]
        vary: Option<String>,
    },
    /// The peer of the FHIR read benchmark: a minimal axum server answering every GET with one
    /// fixed FHIR JSON body (the ceiling an HTTP service on this machine can reach).
    HttpPeer {
        #[arg(long, default_value = "127.0.0.1:0")]
        listen: std::net::SocketAddr,
    },
    /// The peer of the outbound delivery benchmark: an MLLP receiver that answers every message
    /// with one ACK code and prints how many messages arrive per interval, and the total on exit.
    Sink {
        #[arg(long, default_value = "127.0.0.1:2576")]
        listen: std::net::SocketAddr,
        /// The acknowledgment code of every answer (MSA-1).
        #[arg(long, default_value = "AA", value_parser = ["AA", "AE", "AR", "CA", "CE", "CR"])]
        answer: String,
        /// Seconds between progress lines.
        #[arg(long, default_value_t = 1)]
        report_every_secs: u64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // `serve` sizes its runtime from its settings (`worker_threads`), so they are read first.
    let serve_settings = match &cli.command {
        Command::Serve { config } => match Settings::load(config.as_deref()) {
            Ok(settings) => Some(settings),
            Err(e) => {
                eprintln!("ferry: {:#}", anyhow::Error::from(e));
                return ExitCode::FAILURE;
            }
        },
        _ => None,
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Some(settings) = &serve_settings {
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        builder.worker_threads(settings.runtime_threads(cores));
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("ferry: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli, serve_settings)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("ferry: {e:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli, serve_settings: Option<Settings>) -> anyhow::Result<ExitCode> {
    match cli.command {
        Command::Serve { .. } => match serve_settings {
            Some(settings) => serve(settings).await,
            None => anyhow::bail!("serve started without its settings"),
        },
        Command::Migrate { config } => {
            let settings = Settings::load(config.as_deref())?;
            ferry::telemetry::init(&settings.log);
            let store = ferry::app::open_store(&settings)
                .await
                .context("migration failed")?;
            println!("ferry: {} store migrated", store.backend());
            Ok(ExitCode::SUCCESS)
        }
        Command::Mappings { what } => mappings_command(what),
        Command::Outbox { what } => outbox_cli::outbox(what).await,
        Command::Dlq { what } => outbox_cli::dlq(what).await,
        Command::Projections {
            what: ProjectionsCommand::Rebuild { config },
        } => rebuild_projections(config).await,
        Command::Map {
            file,
            outbound: Some(outbound),
            index,
            delivery_id,
            recorded_at,
            explain,
            mappings,
            ..
        } => render_file(
            &file,
            &outbound,
            index,
            &delivery_id,
            &recorded_at,
            explain,
            &mappings,
        ),
        Command::Map {
            file,
            explain,
            interaction,
            mappings,
            outbound: None,
            ..
        } => map_file(&file, explain, &interaction, &mappings),
        Command::Send {
            files,
            to,
            timeout_secs,
        } => send(files, &to, Duration::from_secs(timeout_secs)).await,
        Command::Bench {
            what: BenchCommand::HttpPeer { listen },
        } => http_peer(listen).await,
        Command::Bench {
            what:
                BenchCommand::Sink {
                    listen,
                    answer,
                    report_every_secs,
                },
        } => {
            sink(
                listen,
                &answer,
                Duration::from_secs(report_every_secs.max(1)),
            )
            .await
        }
        Command::Bench {
            what:
                BenchCommand::Mllp {
                    to,
                    connections,
                    messages,
                    corpus,
                    timeout_secs,
                    vary,
                },
        } => {
            let templates = loadgen::load_templates(corpus.as_deref())?;
            eprintln!(
                "ferry bench: {messages} messages over {connections} connections to {to} ({} templates)",
                templates.len()
            );
            let report = loadgen::run(
                &loadgen::LoadOptions {
                    to,
                    connections,
                    messages,
                    timeout: Duration::from_secs(timeout_secs),
                    vary,
                },
                templates,
            )
            .await?;
            println!("{report}");
            Ok(if report.rejected + report.mismatched == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
    }
}

/// `ferry projections rebuild`: a progress bar on a terminal, the count at the end.
async fn rebuild_projections(config: Option<PathBuf>) -> anyhow::Result<ExitCode> {
    use std::io::IsTerminal;
    let settings = Settings::load(config.as_deref())?;
    ferry::telemetry::init(&settings.log);
    let store = ferry::app::open_store(&settings)
        .await
        .context("cannot open the store")?;
    let total = store
        .counts()
        .await
        .context("cannot count the events")?
        .events;
    let bar = if std::io::stderr().is_terminal() {
        let bar = indicatif::ProgressBar::new(u64::try_from(total).unwrap_or(0));
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} replaying events {pos}/{len} [{bar:40}] {per_sec} eta {eta}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
        );
        bar
    } else {
        indicatif::ProgressBar::hidden()
    };
    let replayed = store
        .rebuild_projections(&|n| bar.set_position(n))
        .await
        .context("rebuild failed; the previous read models are unchanged")?;
    bar.finish_and_clear();
    println!("ferry: projections rebuilt from {replayed} events");
    Ok(ExitCode::SUCCESS)
}

/// `ferry bench http-peer`: one route, one fixed body, nothing else; prints its address like serve.
async fn http_peer(listen: std::net::SocketAddr) -> anyhow::Result<ExitCode> {
    const BODY: &str = r#"{"resourceType":"Patient","id":"0193a1b2-7c4d-7e5f-8a9b-0c1d2e3f4a5b","meta":{"versionId":"1","lastUpdated":"2026-11-22T08:00:00.000000Z"},"identifier":[{"type":{"coding":[{"system":"http://terminology.hl7.org/CodeSystem/v2-0203","code":"MR"}]},"system":"urn:ferry:authority:FERRY","value":"900001","assigner":{"display":"FERRY"}}],"active":true,"name":[{"use":"official","family":"Testpatient","given":["Alex","J"]}],"telecom":[{"system":"phone","value":"555-0100","use":"home"}],"gender":"unknown","birthDate":"1980-01-01","address":[{"use":"home","line":["1 Example Street"],"city":"Springfield","state":"ST","postalCode":"00000","country":"USA"}]}"#;
    let app = axum::Router::new().fallback(|| async {
        (
            [(axum::http::header::CONTENT_TYPE, "application/fhir+json")],
            BODY,
        )
    });
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("ferry: http listening on {}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(ExitCode::SUCCESS)
}

/// `ferry bench sink`: prints its address like serve, then one line per interval in which
/// messages arrived (and the first quiet one after), and the total when stopped.
async fn sink(
    listen: std::net::SocketAddr,
    answer: &str,
    every: Duration,
) -> anyhow::Result<ExitCode> {
    let answer = AckCode::parse(answer).with_context(|| format!("unknown ACK code {answer}"))?;
    let options = ferry::sink::SinkOptions {
        answer,
        ..ferry::sink::SinkOptions::default()
    };
    let sink = ferry::sink::Sink::bind(listen, options)
        .await
        .with_context(|| format!("cannot listen on {listen}"))?;
    println!("ferry: sink listening on {}", sink.local_addr()?);
    let stats = sink.stats();
    let shutdown = tokio_util::sync::CancellationToken::new();
    let server = tokio::spawn(sink.run(shutdown.clone()));
    let started = Instant::now();
    let mut ticker = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let (mut last_count, mut last_at, mut last_delta) = (0u64, started, 0u64);
    let stop = wait_for_signal();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {
                let count = stats.messages();
                let delta = count - last_count;
                let secs = last_at.elapsed().as_secs_f64();
                if delta > 0 || last_delta > 0 {
                    println!(
                        "ferry: sink received {delta} messages in {secs:.1} s ({:.0} msg/s), {count} in total, {} connections open",
                        delta as f64 / secs.max(1e-9),
                        stats.open_connections()
                    );
                }
                (last_count, last_at, last_delta) = (count, Instant::now(), delta);
            }
        }
    }
    shutdown.cancel();
    let _ = server.await;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "ferry: sink received {} messages in total over {} connections in {secs:.1} s",
        stats.messages(),
        stats.connections()
    );
    Ok(ExitCode::SUCCESS)
}

async fn serve(settings: Settings) -> anyhow::Result<ExitCode> {
    ferry::telemetry::init(&settings.log);
    let app = App::start(&settings).await?;
    {
        // Exactly these lines, so scripts and tests can find the ports (port 0 is allowed).
        let mut out = std::io::stdout().lock();
        for (_, addr) in &app.mllp_addrs {
            writeln!(out, "ferry: mllp listening on {addr}")?;
        }
        writeln!(out, "ferry: http listening on {}", app.http_addr)?;
        out.flush()?;
    }
    let token = app.shutdown_token();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("Stop signal received.");
        token.cancel();
    });
    app.run_until_stopped().await;
    Ok(ExitCode::SUCCESS)
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn send(files: Vec<PathBuf>, to: &str, timeout: Duration) -> anyhow::Result<ExitCode> {
    let mut client = MllpClient::connect(to, timeout)
        .await
        .with_context(|| format!("cannot connect to {to}"))?;
    let mut naks = 0usize;
    let mut sent = 0usize;
    for file in files {
        let data =
            std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
        let messages = split_messages(&data);
        if messages.is_empty() {
            eprintln!(
                "ferry send: {}: no HL7 message (no MSH segment) found",
                file.display()
            );
            naks += 1;
            continue;
        }
        for message in messages {
            if !expects_accept_ack(&message) {
                // MSH-15 NE/ER: no ACK comes when the message is accepted. Send it and move on;
                // an error NAK (ER) would arrive before the next message's ACK and be reported.
                client
                    .send(&message)
                    .await
                    .with_context(|| format!("{}: cannot send", file.display()))?;
                sent += 1;
                println!("# {} (MSH-15 asks for no ACK on success)", file.display());
                continue;
            }
            let ack = client
                .request(&message)
                .await
                .with_context(|| format!("{}: no ACK", file.display()))?;
            sent += 1;
            let text = String::from_utf8_lossy(&ack);
            println!("# {}", file.display());
            for segment in text.split('\r').filter(|s| !s.is_empty()) {
                println!("{segment}");
            }
            let accepted = summarize_ack(&text)
                .and_then(|s| s.code)
                .is_some_and(|c| c.is_accept());
            if !accepted {
                naks += 1;
            }
        }
    }
    eprintln!(
        "ferry send: {sent} sent, {} accepted, {naks} not accepted",
        sent.saturating_sub(naks)
    );
    Ok(if naks == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

fn load_mappings(dir: &std::path::Path) -> anyhow::Result<Result<MappingSet, ExitCode>> {
    match MappingSet::load(dir) {
        Ok(set) => Ok(Ok(set)),
        Err(problems) => {
            for p in &problems {
                println!("{p}");
            }
            println!(
                "ferry: {} problem(s) in {}; nothing was loaded",
                problems.len(),
                dir.display()
            );
            Ok(Err(ExitCode::FAILURE))
        }
    }
}

fn mappings_command(what: MappingsCommand) -> anyhow::Result<ExitCode> {
    match what {
        MappingsCommand::Check { dir } => {
            let set = match load_mappings(&dir)? {
                Ok(set) => set,
                Err(code) => return Ok(code),
            };
            println!(
                "ferry: {} mapping(s) and {} outbound mapping(s) in {} are valid (version {})",
                set.mappings().len(),
                set.outbound_names().len(),
                dir.display(),
                set.version()
            );
            Ok(ExitCode::SUCCESS)
        }
        MappingsCommand::Test { dir } => {
            let set = match load_mappings(&dir)? {
                Ok(set) => set,
                Err(code) => return Ok(code),
            };
            let outcomes = set.run_examples();
            let failed = outcomes.iter().filter(|o| !o.passed).count();
            for o in &outcomes {
                let status = if o.passed { "ok  " } else { "FAIL" };
                println!(
                    "{status} {}:{} {} <- {}",
                    o.example.file.display(),
                    o.example.line,
                    o.example.mapping,
                    o.example.input.display()
                );
                if !o.passed {
                    for line in o.message.lines() {
                        println!("     {line}");
                    }
                }
            }
            println!(
                "ferry: {} example(s), {} passed, {failed} failed",
                outcomes.len(),
                outcomes.len() - failed
            );
            Ok(if failed == 0 && !outcomes.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::FAILURE
            })
        }
        MappingsCommand::Schema { output, events } => {
            let schema = if events {
                ferry::domain::catalogue_schema()
            } else {
                ferry::mapping::json_schema()
            };
            let text = serde_json::to_string_pretty(&schema)? + "\n";
            match output {
                Some(path) => std::fs::write(&path, text)
                    .with_context(|| format!("cannot write {}", path.display()))?,
                None => print!("{text}"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

fn map_file(
    file: &std::path::Path,
    explain: bool,
    interaction: &str,
    dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let set = match load_mappings(dir)? {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    // A FHIR resource is JSON: an object, so its first non-blank byte is `{`; an HL7 message
    // starts with MSH (or a BOM and MSH).
    let is_json = bytes
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|b| *b == b'{');
    let (result, what) = if is_json {
        let resource: serde_json::Value = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not JSON", file.display()))?;
        let interaction = if interaction == "update" {
            ferry::mapping::FhirInteraction::Update
        } else {
            ferry::mapping::FhirInteraction::Create
        };
        let what = format!(
            "{} {}",
            resource["resourceType"]
                .as_str()
                .unwrap_or("(no resourceType)"),
            interaction.as_str()
        );
        let result = if explain {
            set.explain_fhir(interaction, &resource)
                .map(|(m, e)| (m, Some(e)))
        } else {
            set.map_fhir(interaction, &resource).map(|m| (m, None))
        };
        (result, what)
    } else {
        let decoded = ferry::hl7::decode(&bytes, &ferry::hl7::DecodeOptions::default())
            .with_context(|| format!("cannot decode {}", file.display()))?;
        let message = ferry::hl7::Message::parse(&decoded.text)
            .with_context(|| format!("{} is not an HL7 v2 message", file.display()))?;
        let result = if explain {
            set.explain(&message).map(|(m, e)| (m, Some(e)))
        } else {
            set.map(&message).map(|m| (m, None))
        };
        (result, format!("message type {}", message.msh_field(9)))
    };
    match result {
        Ok((mapped, explanations)) => {
            if matches!(mapped, Mapped::Unmapped) {
                eprintln!("ferry: no mapping applies to {what}");
            }
            println!(
                "{}",
                serde_json::to_string_pretty(&ferry::mapping::events_json(&mapped))?
            );
            if let Some(explanations) = explanations {
                print_explanations(&explanations);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) if is_json => {
            println!(
                "error {} at {}: {} (mapping {})",
                e.code.code(),
                if e.path.is_empty() {
                    "no element"
                } else {
                    &e.path
                },
                e.message,
                e.mapping
            );
            Ok(ExitCode::FAILURE)
        }
        Err(e) => {
            println!(
                "AE {} at {}: {} (mapping {})",
                e.code.code(),
                e.location
                    .as_ref()
                    .map_or_else(|| "no location".to_owned(), |l| l.to_erl('^')),
                e.message,
                e.mapping
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// `ferry map EVENT.json --outbound outbound/NAME`: the rendered message or document.
fn render_file(
    file: &std::path::Path,
    name: &str,
    index: usize,
    delivery_id: &str,
    recorded_at: &str,
    explain: bool,
    dir: &std::path::Path,
) -> anyhow::Result<ExitCode> {
    let set = match load_mappings(dir)? {
        Ok(set) => set,
        Err(code) => return Ok(code),
    };
    let event = ferry::mapping::read_event(file, index).map_err(anyhow::Error::msg)?;
    let recorded_at =
        time::OffsetDateTime::parse(recorded_at, &time::format_description::well_known::Rfc3339)
            .with_context(|| format!("--recorded-at {recorded_at:?} is not an RFC 3339 time"))?;
    let input = event.input("cli", delivery_id, recorded_at);
    let result = if explain {
        set.explain_outbound(name, &input)
            .map(|(r, e)| (r, Some(e)))
    } else {
        set.render_outbound(name, &input).map(|r| (r, None))
    };
    match result {
        Ok((rendered, explanations)) => {
            print!("{}", ferry::mapping::rendered_text(&rendered));
            if let Some(explanations) = explanations {
                print_explanations(&explanations);
            }
            Ok(ExitCode::SUCCESS)
        }
        Err(e) => {
            println!(
                "error{}: {e}",
                e.path().map(|p| format!(" at {p}")).unwrap_or_default()
            );
            Ok(ExitCode::FAILURE)
        }
    }
}

/// One line per output field: where it came from.
fn print_explanations(explanations: &[ferry::mapping::Explanation]) {
    let width = explanations
        .iter()
        .map(|e| e.output.chars().count())
        .max()
        .unwrap_or(0);
    let mut event = usize::MAX;
    for e in explanations {
        if e.event != event {
            event = e.event;
            println!("\nevent {}:", e.event + 1);
        }
        println!(
            "  {:width$}  = {}  <- {} {}{}",
            e.output,
            e.value,
            e.source.as_deref().unwrap_or("(constant)"),
            e.raw
                .as_deref()
                .map(|r| format!("raw {r:?} "))
                .unwrap_or_default(),
            format_args!("by {}", e.rule),
        );
    }
}
