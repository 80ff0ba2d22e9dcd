//! Build script: records the git commit the binary is built from, for the
//! `flashsale_build_info` metric. `FLASHSALE_COMMIT` overrides it (a build
//! without the repository's history, such as a container build, passes it);
//! without either it is "unknown".

use std::process::Command;

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !text.is_empty()).then_some(text)
}

fn main() {
    println!("cargo:rerun-if-env-changed=FLASHSALE_COMMIT");
    // Rerun when HEAD moves: a checkout changes HEAD, a commit the branch's
    // ref (or packed-refs). Only files that exist: a missing one would make
    // cargo rerun this on every build.
    let mut watched = vec!["HEAD".to_string(), "packed-refs".to_string()];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(branch);
    }
    for name in watched {
        if let Some(path) = git(&["rev-parse", "--git-path", &name])
            && std::path::Path::new(&path).exists()
        {
            println!("cargo:rerun-if-changed={path}");
        }
    }
    let commit = std::env::var("FLASHSALE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=FLASHSALE_COMMIT={commit}");
}
