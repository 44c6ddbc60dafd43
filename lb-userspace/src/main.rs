//! `sluice`: the daemon (`sluice run`) and the command-line tool, in one binary.

mod cli;

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let args = cli::Cli::parse();
    let mut logger =
        env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info"));
    if logs_to_journal() {
        // The journal stamps each line itself and reads the level from a `<N>` prefix
        // (sd-daemon(3)); colours would show as escape codes.
        logger
            .write_style(env_logger::WriteStyle::Never)
            .format(|buf, record| {
                use std::io::Write;
                writeln!(
                    buf,
                    "<{}>{} {}: {}",
                    syslog_priority(record.level()),
                    record.level(),
                    record.target(),
                    record.args()
                )
            });
    } else {
        logger.format_timestamp_millis();
    }
    logger.init();
    match cli::dispatch(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", one_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// Whether standard error is the journal's stream: systemd sets `$JOURNAL_STREAM` to its
/// device and inode, which a process started from a shell inside the service does not share.
fn logs_to_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(stream) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Ok(stderr) = std::fs::metadata("/proc/self/fd/2") else {
        return false;
    };
    stream.to_string_lossy() == format!("{}:{}", stderr.dev(), stderr.ino())
}

/// syslog's priority for a log level, which the journal keeps with each line.
fn syslog_priority(level: log::Level) -> u8 {
    match level {
        log::Level::Error => 3,
        log::Level::Warn => 4,
        log::Level::Info => 6,
        log::Level::Debug | log::Level::Trace => 7,
    }
}

/// The error and its causes on one line, outermost first, for people and for scripts. A cause
/// whose text its parent already includes is not repeated.
fn one_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn causes_already_in_the_message_are_not_repeated() {
        let io = std::io::Error::from_raw_os_error(libc::ENOENT);
        let shown = io.to_string();
        let e = anyhow::Error::new(io).context(format!("cannot read x.toml: {shown}"));
        assert_eq!(one_line(&e), format!("cannot read x.toml: {shown}"));
        let e = anyhow::anyhow!("inner").context("outer");
        assert_eq!(one_line(&e), "outer: inner");
    }
}
