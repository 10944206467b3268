//! The `tokenwarden` binary: logging set-up, then the CLI.

use clap::Parser;
use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};

fn log_level() -> Result<LevelFilter, String> {
    match std::env::var("TOKENWARDEN_LOG") {
        Err(_) => Ok(LevelFilter::Warn),
        Ok(v) => v
            .parse()
            .map_err(|_| format!("TOKENWARDEN_LOG={v:?}: use error, warn, info, debug or trace")),
    }
}

fn main() {
    let cli = tokenwarden::cli::Cli::parse();
    let level = match log_level() {
        Ok(l) => l,
        Err(e) => {
            eprintln!("tokenwarden: configuration: {e}");
            std::process::exit(2);
        }
    };
    let config = ConfigBuilder::new()
        .set_target_level(LevelFilter::Off)
        .set_thread_level(LevelFilter::Off)
        .add_filter_allow_str("tokenwarden")
        .build();
    // Only fails if a logger is already set, which cannot happen here.
    let _ = TermLogger::init(level, config, TerminalMode::Stderr, ColorChoice::Auto);
    std::process::exit(tokenwarden::cli::run(cli));
}
