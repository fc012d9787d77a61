//! The names fieldless enums are written with on command lines and in records, from one table per
//! enum: `named_enum!` gives it `ALL`, `name()`, `Display` and a `FromStr` whose error lists the
//! names.

/// `named_enum!(Type, "what it is", { Variant => "name", ... })`.
macro_rules! named_enum {
    ($ty:ident, $what:literal, { $($variant:ident => $name:literal),+ $(,)? }) => {
        impl $ty {
            /// Every value, in the order of the table.
            pub const ALL: [$ty; [$($name),+].len()] = [$($ty::$variant),+];

            /// The name it is written with (what `from_str` reads back).
            pub fn name(self) -> &'static str {
                match self {
                    $($ty::$variant => $name),+
                }
            }
        }

        impl std::fmt::Display for $ty {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.name())
            }
        }

        impl std::str::FromStr for $ty {
            type Err = anyhow::Error;
            fn from_str(s: &str) -> anyhow::Result<Self> {
                match $ty::ALL.iter().find(|v| v.name() == s) {
                    Some(v) => Ok(*v),
                    None => anyhow::bail!(
                        "{} '{}': expected one of {}",
                        $what,
                        s,
                        [$($name),+].join(", ")
                    ),
                }
            }
        }
    };
}

pub(crate) use named_enum;
