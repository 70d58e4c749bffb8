"""Generated protobuf and gRPC code for proto/chord.proto and proto/raft.proto.
Never edit by hand.

Regenerate with:
    python -m grpc_tools.protoc -Ichordctl/pb=proto --python_out=. \
        --grpc_python_out=. --pyi_out=. proto/chord.proto proto/raft.proto
"""
