//! Xenstore client: wire codec, ring, requests, watches, transactions.
