//! The `tokenwarden` binary: logging set-up, then the CLI.

use std::io::IsTerminal;

use simplelog::{ColorChoice, ConfigBuilder, LevelFilter, TermLogger, TerminalMode};

fn log_level() -> Result<LevelFilter, String> {
    match std::env::var("TOKENWARDEN_LOG") {
        Err(_) => Ok(LevelFilter::Warn),
        Ok(v) => v
            .parse()
            .map_err(|_| format!("TOKENWARDEN_LOG={v:?}: use error, warn, info, debug or trace")),
    }
}

/// Colours only for a person at a terminal: never when stderr is a pipe or a
/// file (a cron job's mail, a captured log), nor when `NO_COLOR` is set to
/// anything but an empty string (<https://no-color.org>). termcolor's
/// `Auto` alone looks at `TERM` and `NO_COLOR` but not at the terminal.
fn color_choice(stderr_is_terminal: bool, no_color: Option<&std::ffi::OsStr>) -> ColorChoice {
    match (stderr_is_terminal, no_color) {
        (true, None) => ColorChoice::Auto,
        (true, Some(v)) if v.is_empty() => ColorChoice::Auto,
        _ => ColorChoice::Never,
    }
}

fn main() {
    let cli = tokenwarden::cli::Cli::parse_args();
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
    let colors = color_choice(
        std::io::stderr().is_terminal(),
        std::env::var_os("NO_COLOR").as_deref(),
    );
    let _ = TermLogger::init(level, config, TerminalMode::Stderr, colors);
    std::process::exit(tokenwarden::cli::run(cli));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::ffi::OsStr;

    #[test]
    fn colours_only_on_a_terminal_without_no_color() {
        let is = |c: ColorChoice, want: ColorChoice| {
            assert_eq!(format!("{c:?}"), format!("{want:?}"));
        };
        is(color_choice(true, None), ColorChoice::Auto);
        is(color_choice(true, Some(OsStr::new(""))), ColorChoice::Auto);
        is(
            color_choice(true, Some(OsStr::new("1"))),
            ColorChoice::Never,
        );
        is(color_choice(false, None), ColorChoice::Never);
        is(
            color_choice(false, Some(OsStr::new("1"))),
            ColorChoice::Never,
        );
    }
}
