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
    // Rebuilt when HEAD moves (a commit, a checkout).
    for path in ["HEAD", "index"] {
        if let Some(p) = git(&["rev-parse", "--git-path", path]) {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    let commit = std::env::var("FLASHSALE_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(|| git(&["rev-parse", "--short=12", "HEAD"]))
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=FLASHSALE_COMMIT={commit}");
}
