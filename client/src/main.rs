//! `md5-client`: see `md5-client --help`.

use std::process::ExitCode;

use clap::Parser as _;

#[tokio::main]
async fn main() -> ExitCode {
    md5_client::run(md5_client::cli::Cli::parse()).await
}
