//! The `essops` binary: parse the command line, run it, map the result to an exit code.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = match essops::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            // --help and --version print to stdout and succeed; real usage errors exit 2.
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() {
                essops::error::exit::USAGE
            } else {
                essops::error::exit::OK
            });
        }
    };
    let json = cli.global.json;
    match essops::run(cli) {
        Ok(outcome) => ExitCode::from(outcome.exit_code()),
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("essops: error: {e}");
            if json {
                // Scripts reading stdout see the failure as a line of its own.
                let line = serde_json::json!({
                    "kind": "error",
                    "error": e.to_string(),
                    "exit_code": e.exit_code(),
                });
                println!("{line}");
            }
            ExitCode::from(e.exit_code())
        }
    }
}
