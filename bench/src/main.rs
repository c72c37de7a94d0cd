//! `tidings-bench`: the load generator of the Tidings benchmarks, the floor reference server
//! and the chart of the results. See PERFORMANCE.md.

use clap::{Parser, Subcommand};

use tidings_bench::{abuse, chart, floor, gen2, load, proc_stats, receipts};

#[derive(Parser)]
#[command(name = "tidings-bench", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Drive a server: subscribers, publishers, and a JSON report.
    Load(Box<load::LoadArgs>),
    /// The floor: a minimal WebSocket server broadcasting one pre-serialized frame per event.
    Floor(floor::FloorArgs),
    /// Render the SVG chart of deliveries/s and p99 against subscribers from JSON reports.
    Chart(chart::ChartArgs),
    /// Print VmRSS (KiB) of a process, for scripts.
    Rss {
        /// The process id.
        pid: u32,
    },
    /// Sum the connection figures of several generator reports (a load split over processes).
    Merge(load::MergeArgs),
    /// The budgets' attacks, one after another: the server's peak RSS growth under each, and
    /// the latency an honest client sees meanwhile.
    Abuse(abuse::AbuseArgs),
    /// Read receipts: every member of one room marks it read once a second while subscribed
    /// to its events; receipt events and deliveries per second, and the server's CPU.
    Receipts(receipts::ReceiptsArgs),
    /// A second generator with a WebSocket client of its own: push, connects (idle), merge.
    Gen2(gen2::Gen2Cli),
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Load(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.threads)
                .enable_all()
                .build()?;
            let report = rt.block_on(load::run((*args).clone()))?;
            load::emit(&args, &report)
        }
        Command::Floor(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(args.threads)
                .enable_all()
                .build()?;
            rt.block_on(floor::serve(args))
        }
        Command::Chart(args) => chart::run(&args),
        Command::Rss { pid } => {
            println!("{}", proc_stats::rss_kib(pid).unwrap_or(0));
            Ok(())
        }
        Command::Merge(args) => load::merge(&args),
        Command::Abuse(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(abuse::run(args)).map(|_| ())
        }
        Command::Receipts(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()?;
            rt.block_on(receipts::run(args)).map(|_| ())
        }
        Command::Gen2(cli) => gen2::main(cli),
    }
}
