//! `sluice completions SHELL` and `sluice man`: shell completions and the man page, generated
//! from the same clap definitions that parse the arguments, so they cannot drift from them.

use std::io::Write;

use clap::CommandFactory;
use clap_complete::Shell;

#[derive(clap::Args)]
pub struct CompletionsArgs {
    /// The shell to complete for.
    #[arg(value_enum)]
    shell: Shell,
}

pub fn completions(args: CompletionsArgs) -> anyhow::Result<()> {
    let mut command = super::Cli::command();
    // Into a buffer: the generator panics on a write error (such as `| head`).
    let mut script = Vec::new();
    clap_complete::generate(args.shell, &mut command, "sluice", &mut script);
    std::io::stdout().write_all(&script)?;
    Ok(())
}

/// sluice(1) in roff, on standard output.
pub fn man() -> anyhow::Result<()> {
    let mut page = Vec::new();
    clap_mangen::Man::new(super::Cli::command()).render(&mut page)?;
    std::io::stdout().write_all(&page)?;
    Ok(())
}
