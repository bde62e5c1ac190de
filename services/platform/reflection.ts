import type * as grpc from "@grpc/grpc-js";
import { ReflectionService } from "@grpc/reflection";
import { create, fromBinary, toBinary, type DescFile, type DescService } from "@bufbuild/protobuf";
import { FileDescriptorProtoSchema, FileDescriptorSetSchema, type FileDescriptorSet } from "@bufbuild/protobuf/wkt";

/**
 * The FileDescriptorSet of the given services: their files and, transitively, every file they
 * import, deduplicated by name, dependencies first. Built from the descriptors protoc-gen-es
 * embeds in generated code, which keep everything reflection needs (messages, fields with
 * json names, services, options, dependencies) but not source comments (source_code_info),
 * so `grpcurl describe` shows no comments.
 */
export function fileDescriptorSet(services: readonly DescService[], extraFiles: readonly Uint8Array[] = []): FileDescriptorSet {
  const seen = new Map<string, DescFile>();
  const visit = (file: DescFile) => {
    if (seen.has(file.proto.name)) return;
    for (const dep of file.dependencies) visit(dep);
    seen.set(file.proto.name, file);
  };
  for (const s of services) visit(s.file);
  const files = [...seen.values()].map((f) => f.proto);
  for (const bytes of extraFiles) {
    const proto = fromBinary(FileDescriptorProtoSchema, bytes);
    if (!seen.has(proto.name)) files.push(proto);
  }
  return create(FileDescriptorSetSchema, { file: files });
}

type PackageDefinition = ConstructorParameters<typeof ReflectionService>[0];

/**
 * Registers grpc.reflection.v1 and v1alpha ServerReflection on server, describing the given
 * services plus extra serialized files (health). @grpc/reflection reads only the
 * fileDescriptorProtos of a proto-loader package definition, so the set is handed over in
 * that shape.
 */
export function addReflection(server: grpc.Server, services: readonly DescService[], extraFiles: readonly Uint8Array[] = []): void {
  const set = fileDescriptorSet(services, extraFiles);
  const fileDescriptorProtos = set.file.map((f) => Buffer.from(toBinary(FileDescriptorProtoSchema, f)));
  const pkg = {
    "dabba.reflection.files": { format: "Protocol Buffer 3 FileDescriptorProto", type: {}, fileDescriptorProtos },
  } as unknown as PackageDefinition;
  new ReflectionService(pkg).addToServer(server);
}
