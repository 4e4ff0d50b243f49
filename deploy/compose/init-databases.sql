-- One database per service (DESIGN.md "Infrastructure"); run once by the postgres image.
CREATE DATABASE yibao_payment;
CREATE DATABASE yibao_ledger;
CREATE DATABASE yibao_risk;
CREATE DATABASE yibao_notify;
