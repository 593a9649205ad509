# Sourced: sets `cargo_bin` to the folder where `cargo build --release` puts the binaries, wherever
# the target directory is (CARGO_TARGET_DIR, build.target-dir in a cargo config, or ./target).
cargo_bin="$(cargo metadata --format-version 1 --no-deps \
  | python3 -c 'import json, sys; print(json.load(sys.stdin)["target_directory"])')/release"
