"""eniplane: a shared-ENI network function for serverless workers (XDP datapath, Python control)."""

__version__ = "0.1.0"
