//! Moving provider keys out of a LiteLLM deployment (filled in below).
