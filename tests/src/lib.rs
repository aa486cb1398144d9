//! Test harness: spawns real `fulcrumd` processes.
