//! Helpers shared by the integration tests (`crate::common::…` from every
//! module of tests/tests.rs), and the `on_both_backends!` macro (visible to
//! every module after `common` in tests/tests.rs).

/// Makes each named test of the calling file a test on each backend:
/// `sqlite::NAME` and `postgres::NAME` call `NAME(backend)` (the PostgreSQL half is skipped,
/// loudly, where no server can be had; see tests/common/pg.rs).
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[doc = concat!("`", stringify!($name), "` on a SQLite file.")]
                #[test]
                fn $name() {
                    super::$name(crate::common::tw::Backend::Sqlite)
                }
            )*
        }
        mod postgres {
            $(
                #[doc = concat!("`", stringify!($name), "` on a PostgreSQL database.")]
                #[test]
                fn $name() {
                    super::$name(crate::common::tw::Backend::Postgres)
                }
            )*
        }
    };
}

pub mod chaos;
pub mod fake_oauth;
pub mod http;
pub mod node;
#[cfg(feature = "postgres")]
pub mod pg;
pub mod scripted;
pub mod spec;
pub mod tw;

/// A tiny deterministic generator (xorshift64*) for generated test inputs.
pub struct Rng(pub u64);

impl Rng {
    /// The next value.
    pub fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    /// A value below `n`.
    pub fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
}
