"""The prediction log: sampled requests of the served versions, written as Parquet partitioned
``model=/version=/date=/hour=`` off the request path, and the labels that come back for them."""
