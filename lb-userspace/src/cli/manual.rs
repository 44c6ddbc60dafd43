//! `sluice completions SHELL` and `sluice man`: shell completions and man pages, generated
//! from the same clap definitions that parse the arguments, so they cannot drift from them.

use std::{io::Write, path::PathBuf};

use anyhow::Context;
use clap::CommandFactory;
use clap_complete::Shell;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

#[derive(clap::Args)]
pub struct ManArgs {
    /// Write sluice.1 and a page for every subcommand (sluice-run.1, sluice-config-show.1,
    /// ...) into this directory, instead of printing sluice.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut command = super::Cli::command();
    // Into a buffer: the generator panics on a write error (such as `| head`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "sluice", &mut script);
    std::io::stdout().write_all(&script)?;
    Ok(())
}

pub fn man(args: ManArgs) -> anyhow::Result<()> {
    match args.dir {
        Some(dir) => clap_mangen::generate_to(super::Cli::command(), &dir)
            .with_context(|| format!("writing man pages into {}", dir.display())),
        None => {
            let mut page = Vec::new();
            clap_mangen::Man::new(super::Cli::command()).render(&mut page)?;
            std::io::stdout().write_all(&page)?;
            Ok(())
        }
    }
}
