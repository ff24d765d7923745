//! `scenewatch man`: the man pages (roff) generated from the clap definition with
//! clap_mangen: scenewatch(1) and one scenewatch-COMMAND(1) per command, each with a SEE ALSO
//! section naming only pages of the set.

use std::path::Path;

use clap::CommandFactory as _;

use super::Outcome;
use super::args::{Cli, VERSION};
use crate::exit::{self, UsageError};

/// `scenewatch man`: one page to stdout, or every page into `dir`.
pub fn run(command: Option<&str>, dir: Option<&Path>) -> Outcome {
    let pages = pages();
    if let Some(dir) = dir {
        let written = std::fs::create_dir_all(dir).and_then(|()| {
            pages
                .iter()
                .try_for_each(|(name, text)| std::fs::write(dir.join(name), text))
        });
        written
            .map_err(|e| anyhow::anyhow!("cannot write the man pages to {}: {e}", dir.display()))?;
        for (name, _) in &pages {
            println!("{}", dir.join(name).display());
        }
        return Ok(exit::OK);
    }
    let wanted = match command {
        None => "scenewatch.1".to_string(),
        Some(c) => format!("scenewatch-{c}.1"),
    };
    match pages.iter().find(|(name, _)| *name == wanted) {
        Some((_, text)) => {
            print!("{text}");
            Ok(exit::OK)
        }
        None => {
            let known: Vec<&str> = pages
                .iter()
                .filter_map(|(n, _)| n.strip_prefix("scenewatch-")?.strip_suffix(".1"))
                .collect();
            Err(UsageError(format!(
                "no command {:?}; pages exist for: {}",
                command.unwrap_or_default(),
                known.join(", ")
            ))
            .into())
        }
    }
}

/// Every man page as (file name, roff): scenewatch.1, then scenewatch-COMMAND.1 per command
/// (and scenewatch-COMMAND-SUB.1 per subcommand, e.g. scenewatch-ledger-migrate.1).
/// clap_mangen names scenewatch-COMMAND(1) in the main page's SUBCOMMANDS section; each page
/// also ends in a SEE ALSO section naming only pages of this set, so every reference is real.
pub fn pages() -> Vec<(String, String)> {
    use clap_mangen::roff::{Roff, bold, roman};
    let mut cli = Cli::command().disable_help_subcommand(true);
    cli.build();
    let commands: Vec<clap::Command> = cli
        .get_subcommands()
        .filter(|c| !c.is_hide_set())
        .cloned()
        .collect();
    let title = |c: &clap::Command| c.get_display_name().unwrap_or(c.get_name()).to_string();
    let page = |cmd: clap::Command, see_also: Vec<String>| {
        // Subcommands carry no version of their own: name the program's on every page.
        let man = clap_mangen::Man::new(cmd).source(format!("scenewatch {VERSION}"));
        let mut out = Vec::new();
        // Rendering into a Vec cannot fail.
        let _ = man.render(&mut out);
        let mut refs = Vec::new();
        for (i, name) in see_also.iter().enumerate() {
            if i > 0 {
                refs.push(roman(", "));
            }
            refs.push(bold(name.as_str()));
            refs.push(roman("(1)"));
        }
        let mut roff = Roff::new();
        roff.control("SH", ["SEE ALSO"]);
        // No hyphenation: a page name split across lines ("sce-newatch-check") is unreadable.
        roff.control("nh", []);
        roff.text(refs);
        roff.control("PP", []);
        roff.text([roman(
            "README.md, docs/operations.md and docs/troubleshooting.md in the source tree.",
        )]);
        let text = String::from_utf8_lossy(&out).into_owned() + &roff.to_roff();
        (man.get_filename(), text)
    };
    let all: Vec<String> = commands.iter().map(title).collect();
    let mut pages = vec![page(cli.clone(), all.clone())];
    for c in &commands {
        let me = title(c);
        let mut see_also = vec!["scenewatch".to_string()];
        see_also.extend(all.iter().filter(|t| **t != me).cloned());
        pages.push(page(c.clone(), see_also));
        // A verb with verbs of its own (`ledger migrate`): a page each, naming their parent.
        for sub in c.get_subcommands().filter(|s| !s.is_hide_set()) {
            pages.push(page(
                sub.clone(),
                vec![me.clone(), "scenewatch".to_string()],
            ));
        }
    }
    pages
}
