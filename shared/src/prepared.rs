//! Statements Postgres parses and plans once per connection.
//!
//! Diesel prepares and caches a statement only when its text can never change: never an
//! `UPDATE` of its query builder (a changeset may skip columns), nor `sql_query` (its text is
//! any string), nor `eq_any` (one placeholder per value). Those go out as unnamed statements, so
//! Postgres parses, analyzes and plans each of them every time. A [`Prepared`] statement's text
//! is a `&'static str` with one placeholder per bind (`$1`, `$2`, … each once, in order), so
//! diesel's statement cache (keyed by text and bind types) prepares it on a connection's first
//! use and afterwards sends only its binds. The jobs' hot statements are written this way.

use std::marker::PhantomData;

use diesel::QueryResult;
use diesel::pg::Pg;
use diesel::query_builder::{AstPass, Query, QueryFragment, QueryId};
use diesel::serialize::ToSql;
use diesel::sql_types::{HasSqlType, Untyped};

/// A statement with fixed text and its binds; load rows with `QueryableByName` types.
#[must_use = "a statement does nothing until it is run"]
pub struct Prepared<B> {
    sql: &'static str,
    binds: B,
}

/// `sql` with `binds`, a tuple of [`bind`]s, one per placeholder of `sql` in order.
pub fn prepared<B: Binds>(sql: &'static str, binds: B) -> Prepared<B> {
    assert_eq!(placeholders(sql), B::COUNT, "one bind per placeholder, in order: {sql}");
    Prepared { sql, binds }
}

/// One bound value of SQL type `ST`.
pub struct Bind<ST, T> {
    value: T,
    sql_type: PhantomData<ST>,
}

/// `value` bound as SQL type `ST`.
pub fn bind<ST, T>(value: T) -> Bind<ST, T> {
    Bind { value, sql_type: PhantomData }
}

/// A tuple of [`Bind`]s.
pub trait Binds {
    /// How many.
    const COUNT: usize;
    /// Pushes bind `index` (from 0) into `out`.
    fn push<'b>(&'b self, index: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()>;
}

macro_rules! binds {
    ($count:expr; $($n:tt $st:ident $t:ident),+) => {
        impl<$($st, $t),+> Binds for ($(Bind<$st, $t>,)+)
        where
            $(Pg: HasSqlType<$st>, $t: ToSql<$st, Pg>),+
        {
            const COUNT: usize = $count;
            fn push<'b>(&'b self, index: usize, out: &mut AstPass<'_, 'b, Pg>) -> QueryResult<()> {
                match index {
                    $($n => out.push_bind_param::<$st, $t>(&self.$n.value),)+
                    _ => unreachable!("no bind {index}"),
                }
            }
        }
    };
}

binds!(1; 0 S0 T0);
binds!(2; 0 S0 T0, 1 S1 T1);
binds!(3; 0 S0 T0, 1 S1 T1, 2 S2 T2);
binds!(4; 0 S0 T0, 1 S1 T1, 2 S2 T2, 3 S3 T3);
binds!(5; 0 S0 T0, 1 S1 T1, 2 S2 T2, 3 S3 T3, 4 S4 T4);
binds!(6; 0 S0 T0, 1 S1 T1, 2 S2 T2, 3 S3 T3, 4 S4 T4, 5 S5 T5);
binds!(7; 0 S0 T0, 1 S1 T1, 2 S2 T2, 3 S3 T3, 4 S4 T4, 5 S5 T5, 6 S6 T6);

/// The placeholders `$1`, `$2`, … of `sql`, counted while they come in order, each once.
fn placeholders(sql: &str) -> usize {
    let mut found = 0;
    let mut rest = sql;
    while let Some((_, number, after)) = next_placeholder(rest) {
        if number.parse::<usize>() != Ok(found + 1) {
            return usize::MAX;
        }
        found += 1;
        rest = after;
    }
    found
}

/// The text before `sql`'s first placeholder, its number and the text after it.
fn next_placeholder(sql: &str) -> Option<(&str, &str, &str)> {
    let at = sql.find('$')?;
    let digits = sql[at + 1..].bytes().take_while(u8::is_ascii_digit).count();
    Some((&sql[..at], &sql[at + 1..at + 1 + digits], &sql[at + 1 + digits..]))
}

impl<B: Binds> QueryFragment<Pg> for Prepared<B> {
    fn walk_ast<'b>(&'b self, mut out: AstPass<'_, 'b, Pg>) -> QueryResult<()> {
        // Each `$n` is written back by `push_bind_param`, which numbers the binds in order.
        let mut rest = self.sql;
        for index in 0..B::COUNT {
            let (before, _, after) = next_placeholder(rest).expect("checked by `prepared`");
            out.push_sql(before);
            self.binds.push(index, &mut out)?;
            rest = after;
        }
        out.push_sql(rest);
        Ok(())
    }
}

impl<B> QueryId for Prepared<B> {
    type QueryId = ();
    // No static id: the cache keys it by its text and bind types.
    const HAS_STATIC_QUERY_ID: bool = false;
}

impl<B> Query for Prepared<B> {
    type SqlType = Untyped;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholders_are_counted_only_in_order_and_once() {
        assert_eq!(placeholders("SELECT 1"), 0);
        assert_eq!(placeholders("SELECT $1, $2 WHERE x = ANY($3::uuid[])"), 3);
        assert_eq!(placeholders("SELECT $1, $10"), usize::MAX);
        assert_eq!(placeholders("SELECT $2, $1"), usize::MAX);
        assert_eq!(placeholders("SELECT $1, $1"), usize::MAX);
    }
}
