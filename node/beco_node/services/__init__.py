"""The node servers (I/O): rendezvous, validator, user node and SST, over grpc.aio."""
