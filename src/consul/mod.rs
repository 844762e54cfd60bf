//! TODO(helper A): the Consul HTTP API on awc.
