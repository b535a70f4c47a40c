"""An outside client of rwr.v1.TeacherService: Python grpcio with stubs generated from our proto
at run time (grpc_tools.protoc). Run by python_client_test.cc; prints one JSON object.

usage: python_client.py PROTO_ROOT OUT_DIR HOST:PORT TOKEN
"""
import json
import sys

from grpc_tools import protoc


def main():
    proto_root, out_dir, target, token = sys.argv[1:5]
    code = protoc.main(["protoc", f"-I{proto_root}", f"--python_out={out_dir}", f"--grpc_python_out={out_dir}",
                        f"{proto_root}/rwr/v1/teacher.proto"])
    if code != 0:
        raise SystemExit(f"protoc failed with {code}")
    sys.path.insert(0, out_dir)
    import grpc
    from rwr.v1 import teacher_pb2, teacher_pb2_grpc

    channel = grpc.insecure_channel(target)
    stub = teacher_pb2_grpc.TeacherServiceStub(channel)
    auth = [("authorization", f"Bearer {token}")]
    out = {}

    info = stub.GetServerInfo(teacher_pb2.ServerInfoRequest(), metadata=auth, timeout=10)
    out["teacher_id"] = info.teacher_id
    out["backend"] = info.backend

    context = ("The orchard grows apples and pears.\n\n"
               "The old mill on the river was built in 1821 by the Hart family.\n\n"
               "Swans nest by the lake in spring.")
    note = stub.ExtractNote(teacher_pb2.NoteRequest(context=context, question="When was the old mill built?"),
                            metadata=auth, timeout=10)
    out["note"] = note.note
    out["note_empty"] = note.empty

    batch = teacher_pb2.TaskBatch(tasks=[
        teacher_pb2.TeacherTask(verify=teacher_pb2.VerifyRequest(question="When?", note=note.note, answer="1821")),
        teacher_pb2.TeacherTask(remove_evidence=teacher_pb2.RemoveEvidenceRequest(
            context=context, question="When?", answer="1821")),
    ])
    results = stub.RunBatch(batch, metadata=auth, timeout=10).results
    out["batch_codes"] = [r.code for r in results]
    out["consistent"] = results[0].verify.consistent
    out["negative_context"] = results[1].remove_evidence.context

    try:
        stub.ExtractNote(teacher_pb2.NoteRequest(context=context, question="q"), timeout=10)
        out["no_token"] = "OK"
    except grpc.RpcError as error:
        out["no_token"] = error.code().name

    # grpc.health.v1.Health/Check without its generated stubs: HealthCheckRequest{service=1},
    # HealthCheckResponse{status=1}, SERVING = 1.
    service = b"rwr.v1.TeacherService"
    check = channel.unary_unary("/grpc.health.v1.Health/Check", request_serializer=None, response_deserializer=None)
    response = check(b"\x0a" + bytes([len(service)]) + service, timeout=10)
    out["health"] = "SERVING" if response == b"\x08\x01" else response.hex()

    info = stub.GetServerInfo(teacher_pb2.ServerInfoRequest(), metadata=auth, timeout=10)
    out["calls_served"] = info.calls_served
    print(json.dumps(out))


if __name__ == "__main__":
    main()
