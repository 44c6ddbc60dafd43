//! The ABI between sluice's XDP program (`lb-ebpf`) and its userspace (`lb-userspace`).
//!
//! Every type that crosses a map is `#[repr(C)]`, has explicit padding fields, a compile-time
//! size assertion, and derives `bytemuck::Pod` (whose derive refuses implicit padding at
//! compile time). Multi-byte fields are host byte order unless their name ends in `_be`.
#![no_std]

pub mod addr;
pub mod bench;
pub mod config;
pub mod decap;
pub mod flow;
pub mod listener;
pub mod proto;
pub mod state;
pub mod stats;
pub mod target;

/// Implements `aya::Pod` for map types on the userspace side.
macro_rules! impl_aya_pod {
    ($($t:ty),* $(,)?) => {
        $(
            // SAFETY: the type is `bytemuck::Pod` (all-integer, no padding, any bit pattern valid).
            #[cfg(feature = "user")]
            unsafe impl aya::Pod for $t {}
        )*
    };
}
pub(crate) use impl_aya_pod;

/// Defines a counter enum (an index into a per-CPU counter map): variants in index order, each
/// with a stable name, a kind and a help text taken from its doc comment, plus `ALL`, `name()`,
/// `kind()` and `help()`. One definition for every program's counters.
macro_rules! counters {
    ($(#[$meta:meta])* $enum:ident {
        $( $(#[doc = $doc:literal])* $variant:ident = $name:literal, $kind:ident; )*
    }) => {
        $(#[$meta])*
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $enum {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl $enum {
            /// Every counter, in index order.
            pub const ALL: &'static [$enum] = &[$($enum::$variant),*];

            /// The stable name shown by `sluice stats` and used in metrics.
            pub const fn name(self) -> &'static str {
                match self { $($enum::$variant => $name,)* }
            }

            pub const fn kind(self) -> $crate::stats::CounterKind {
                match self { $($enum::$variant => $crate::stats::CounterKind::$kind,)* }
            }

            /// A one-line explanation, for humans.
            pub const fn help(self) -> &'static str {
                match self { $($enum::$variant => concat!($($doc),*),)* }
            }
        }
    };
}
pub(crate) use counters;

/// Asserts a map type's size at compile time, so an accidental layout change fails the build
/// of both sides instead of silently corrupting map entries.
macro_rules! assert_size {
    ($t:ty, $n:expr) => {
        const _: () = assert!(core::mem::size_of::<$t>() == $n);
    };
}
pub(crate) use assert_size;
