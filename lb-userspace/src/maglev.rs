//! Maglev consistent hashing (TODO)
