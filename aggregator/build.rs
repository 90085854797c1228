//! Checks, before anything long starts, that the tools the Kafka sink's bundled C
//! libraries need are installed (librdkafka: cmake and C and C++ compilers; OpenSSL:
//! perl and make; libcurl and zlib: the C compiler), and says in one message what to
//! install when they are not. Without it a newcomer meets a page of cmake or compiler
//! output from deep inside `rdkafka-sys` and has to guess.

use std::env;
use std::process::{Command, Stdio};

/// True when `program --version` runs.
fn runs(program: &str) -> bool {
    Command::new(program)
        .arg("--version")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

fn main() {
    for var in ["CC", "CXX", "CMAKE", "PATH"] {
        println!("cargo:rerun-if-env-changed={var}");
    }
    println!("cargo:rerun-if-changed=build.rs");

    let has = |var: &str, defaults: &[&str]| match env::var(var).ok().filter(|s| !s.is_empty()) {
        Some(program) => runs(&program),
        None => defaults.iter().any(|p| runs(p)),
    };
    let has_cc = has("CC", &["cc", "gcc", "clang"]);
    // librdkafka's CMakeLists declares C and C++ (its C++ wrapper), so cmake wants both.
    let has_cxx = has("CXX", &["c++", "g++", "clang++"]);
    let cmake = env::var("CMAKE")
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "cmake".to_string());
    let mut missing = Vec::new();
    if !has_cc {
        missing.push("a C compiler (gcc or clang)");
    }
    if !has_cxx {
        missing.push("a C++ compiler (g++ or clang++)");
    }
    if !runs(&cmake) {
        missing.push("cmake");
    }
    if !runs("make") {
        missing.push("make");
    }
    if !runs("perl") {
        missing.push("perl");
    }
    if missing.is_empty() {
        return;
    }
    panic!(
        "\n\nferrule-aggregator builds librdkafka, OpenSSL, libcurl and zlib from bundled \
         sources and needs {} to do it, not found on PATH.\n\
         Install them and build again; no other system library is needed:\n\
         \x20 Debian/Ubuntu:  sudo apt-get install -y build-essential cmake perl\n\
         \x20 Fedora/RHEL:    sudo dnf install -y gcc gcc-c++ make cmake perl\n\
         \x20 macOS:          xcode-select --install && brew install cmake\n\n",
        missing.join(", ")
    );
}
