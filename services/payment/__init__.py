"""payment: the public payment API and the payment state machine."""
