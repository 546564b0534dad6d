//! Job directory layout, identical-path mounts, host path map and safe deletion.
