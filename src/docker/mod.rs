//! The only module that talks to Docker (bollard): containers, exec/attach, networks, images.
