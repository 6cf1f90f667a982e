//! Tests of the mapping engine.
