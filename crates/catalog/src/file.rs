//! The embedded file store.
