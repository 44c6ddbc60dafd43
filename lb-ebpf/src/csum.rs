//! Incremental Internet checksum updates (RFC 1624). (Being implemented.)
