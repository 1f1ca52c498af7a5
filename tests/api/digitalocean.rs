//! The DigitalOcean provider, against a faithful fake of DigitalOcean's API
//! (`fake_do`): the fake itself first, then the provider through the server.

mod fake;
mod provider;
