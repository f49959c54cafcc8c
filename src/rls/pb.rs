//! The Envoy API types the service speaks, from the `envoy-types` crate.

pub use envoy_types::pb::envoy::config::core::v3::HeaderValue;
pub use envoy_types::pb::envoy::extensions::common::ratelimit::v3::{
    rate_limit_descriptor, RateLimitDescriptor,
};
pub use envoy_types::pb::envoy::service::ratelimit::v3::{
    rate_limit_response, rate_limit_service_client, rate_limit_service_server, RateLimitRequest,
    RateLimitResponse,
};
pub use envoy_types::pb::google::protobuf::Duration as PbDuration;
pub use envoy_types::pb::google::protobuf::UInt64Value;
