//! `peerdma completions SHELL` and `peerdma man`: generated from the
//! command's own clap definitions, so they always match it.

use anyhow::{Context, Result};
use clap::{Args, CommandFactory};
use std::path::PathBuf;
use std::process::ExitCode;

/// `peerdma completions`.
#[derive(Args)]
pub struct CompletionsArgs {
    /// The shell: bash, zsh, fish, elvish or powershell.
    shell: clap_complete::Shell,
}

/// `peerdma man`.
#[derive(Args)]
pub struct ManArgs {
    /// Write peerdma.1 and a page per subcommand (peerdma-topo.1, ...) into
    /// this directory instead of printing peerdma.1.
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
}

pub fn completions(a: &CompletionsArgs) -> Result<ExitCode> {
    let mut cmd = super::Cli::command();
    let mut out = Vec::new();
    clap_complete::generate(a.shell, &mut cmd, "peerdma", &mut out);
    super::print(&String::from_utf8_lossy(&out))?;
    Ok(ExitCode::SUCCESS)
}

fn render(cmd: clap::Command) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cmd)
        .render(&mut out)
        .context("rendering the man page")?;
    Ok(out)
}

pub fn man(a: &ManArgs) -> Result<ExitCode> {
    let cmd = super::Cli::command();
    match &a.dir {
        None => super::print(&String::from_utf8_lossy(&render(cmd)?))?,
        Some(dir) => {
            std::fs::create_dir_all(dir)
                .with_context(|| format!("cannot create {}", dir.display()))?;
            let mut pages = vec![("peerdma.1".to_string(), render(cmd.clone())?)];
            for sub in cmd.get_subcommands().filter(|s| s.get_name() != "help") {
                let name = format!("peerdma-{}", sub.get_name());
                let page = render(sub.clone().name(name.clone()).display_name(name.clone()))?;
                pages.push((format!("{name}.1"), page));
            }
            for (file, bytes) in &pages {
                let path = dir.join(file);
                peerdma_pci::write_file(&path, bytes, "a man page")?;
            }
            super::print(&format!(
                "wrote {} man pages to {}\n",
                pages.len(),
                dir.display()
            ))?;
        }
    }
    Ok(ExitCode::SUCCESS)
}
