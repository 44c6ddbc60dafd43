//! Counters of `sluice_decap`, the XDP program that targets of `tunnel` listeners run to strip
//! the outer header (`DECAP_STATS`, per CPU, one [`CounterValue`](crate::stats::CounterValue)
//! slot per [`DecapCounter`]). Every frame the program sees moves exactly one of them.

macro_rules! decap_counters {
    ($( $(#[doc = $doc:literal])* $variant:ident = $name:literal; )*) => {
        /// Index into the `DECAP_STATS` map.
        #[repr(u32)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum DecapCounter {
            $( $(#[doc = $doc])* $variant, )*
        }

        impl DecapCounter {
            /// Every counter, in index order.
            pub const ALL: &'static [DecapCounter] = &[$(DecapCounter::$variant),*];

            /// The stable name shown to people and used in metrics.
            pub const fn name(self) -> &'static str {
                match self { $(DecapCounter::$variant => $name,)* }
            }

            /// A one-line explanation, for humans.
            pub const fn help(self) -> &'static str {
                match self { $(DecapCounter::$variant => concat!($($doc),*),)* }
            }
        }
    };
}

decap_counters! {
    /// Decapsulated: the outer IP header was removed and the inner packet passed to the local stack.
    Decapsulated = "decapsulated";
    /// Passed untouched: not IPv4 or IPv6 (ARP, LLDP, ...).
    PassedNotIp = "passed_not_ip";
    /// Passed untouched: IP, but not IPIP / IPv6-in-IP (protocol 4 or 41 directly after the outer header).
    PassedNotTunnel = "passed_not_tunnel";
    /// Passed untouched: a VLAN-tagged frame; attach to the VLAN interface or let the NIC strip tags.
    PassedVlan = "passed_vlan";
    /// Passed untouched: a fragment of a tunnelled packet, which XDP cannot reassemble.
    PassedFragment = "passed_fragment";
    /// Malformed outer header, passed untouched: cut short, wrong version, IHL below 5, bad header checksum, or a length longer than the frame.
    MalformedOuter = "malformed_outer";
    /// Malformed inner header, passed untouched: cut short, wrong version for the outer protocol, IHL below 5, or longer than the outer packet's payload.
    MalformedInner = "malformed_inner";
    /// Passed untouched: removing the outer header failed (bpf_xdp_adjust_head refused).
    DecapFailed = "decap_failed";
}

/// Number of slots in the `DECAP_STATS` map.
pub const DECAP_COUNTER_COUNT: u32 = DecapCounter::ALL.len() as u32;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn indices_are_dense_and_names_unique() {
        for (i, c) in DecapCounter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i, "{c:?} is out of order");
            assert!(!c.help().is_empty(), "{c:?} has no help text");
            for other in &DecapCounter::ALL[i + 1..] {
                assert_ne!(c.name(), other.name());
            }
        }
    }
}
