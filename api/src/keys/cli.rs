//! `md5-api keys create | list | update | revoke`: the operator's commands for API keys. They
//! work on the database `DATABASE_URL` names (migrating it first, as the api does); every api
//! replica sees a change within a second.

use anyhow::{Context as _, bail};
use std::io::Write as _;

use super::store;
use crate::Config;
use crate::config::{Command, KeysCommand};

/// Runs `command` against the configured database.
pub async fn run(config: &Config, command: &Command) -> anyhow::Result<()> {
    let Command::Keys(command) = command;
    shared::db::run_migrations(&config.database, "md5-api keys").await?;
    let mut conn = shared::db::establish(&config.database.database_url).await.with_context(|| {
        format!("cannot connect to {}", shared::db::server_address(&config.database.database_url))
    })?;
    let conn = &mut conn;
    let mut out = std::io::stdout().lock();
    match command {
        KeysCommand::Create { name, admin, quotas } => {
            let key = super::generate();
            if !store::insert(conn, name, &super::hash(&key), *admin, quotas).await.map_err(check_name)? {
                bail!("a key named {name:?} exists already (revoked keys keep their names)");
            }
            writeln!(out, "{key}")?;
            eprintln!("created key {name:?}; it is shown only now: store it where its client can read it");
        }
        KeysCommand::List { json } => {
            let rows = store::all(conn).await?;
            if !*json {
                writeln!(
                    out,
                    "{:<24} {:<20} {:<20} {:<20} {:<5} QUOTAS",
                    "NAME", "CREATED", "LAST USED", "REVOKED", "ADMIN"
                )?;
            }
            let time = |at: Option<chrono::DateTime<chrono::Utc>>| {
                at.map_or_else(|| "-".to_owned(), |at| at.format("%Y-%m-%dT%H:%M:%SZ").to_string())
            };
            for row in rows {
                let quotas = serde_json::to_value(row.overrides())?;
                if *json {
                    let line = serde_json::json!({
                        "name": row.name, "created_at": row.created_at, "last_used_at": row.last_used_at,
                        "revoked_at": row.revoked_at, "admin": row.admin, "quotas": quotas,
                    });
                    writeln!(out, "{line}")?;
                } else {
                    writeln!(
                        out,
                        "{:<24} {:<20} {:<20} {:<20} {:<5} {quotas}",
                        row.name,
                        time(Some(row.created_at)),
                        time(row.last_used_at),
                        time(row.revoked_at),
                        if row.admin { "yes" } else { "no" },
                    )?;
                }
            }
        }
        KeysCommand::Update { name, quotas } => {
            let Some(row) = store::find(conn, name).await? else { bail!("no key is named {name:?}") };
            if row.revoked_at.is_some() {
                bail!("the key {name:?} is revoked");
            }
            let updated = row.overrides().updated_by(*quotas);
            store::set_quotas(conn, name, &updated).await?;
            eprintln!("key {name:?} now has the quotas {}", serde_json::to_value(updated)?);
        }
        KeysCommand::Revoke { name } => match store::revoke(conn, name).await? {
            None => bail!("no key is named {name:?}"),
            Some(false) => eprintln!("key {name:?} was revoked already"),
            Some(true) => eprintln!("revoked key {name:?}; every api replica refuses it within a second"),
        },
    }
    Ok(())
}

/// A name the table's check refuses, said as such.
fn check_name(err: diesel::result::Error) -> anyhow::Error {
    match err {
        diesel::result::Error::DatabaseError(diesel::result::DatabaseErrorKind::CheckViolation, _) => {
            anyhow::anyhow!(
                "a key's name is 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
            )
        }
        other => other.into(),
    }
}
