import CRabbitMQ

#if canImport(Glibc)
    import Glibc
#elseif canImport(Darwin)
    import Darwin
#endif

/// Owns the C memory behind the `amqp_bytes_t` / `amqp_table_t` values handed to one library
/// call. librabbitmq only reads them during the call (it encodes the frame before returning), so
/// everything is freed when the arena goes away; no pointer into Swift-managed storage escapes.
final class CArena {
    private var allocations: [UnsafeMutableRawPointer] = []

    deinit {
        for pointer in allocations { free(pointer) }
    }

    private func allocate(_ byteCount: Int) -> UnsafeMutableRawPointer {
        // malloc(0) may return NULL; a one-byte minimum keeps every pointer valid.
        guard let pointer = malloc(max(byteCount, 1)) else { fatalError("out of memory") }
        allocations.append(pointer)
        return pointer
    }

    func bytes<Bytes: Collection<UInt8>>(_ source: Bytes) -> amqp_bytes_t {
        let count = source.count
        let pointer = allocate(count)
        UnsafeMutableRawBufferPointer(start: pointer, count: count).copyBytes(from: source)
        return amqp_bytes_t(len: count, bytes: pointer)
    }

    func bytes(_ string: String) -> amqp_bytes_t { bytes(string.utf8) }

    /// A NUL-terminated copy, for the calls that take `const char *`.
    func cString(_ string: String) -> UnsafePointer<CChar> {
        let utf8 = Array(string.utf8) + [0]
        return UnsafeRawPointer(bytes(utf8).bytes!).assumingMemoryBound(to: CChar.self)
    }

    func table(_ fields: [String: AMQPFieldValue]) -> amqp_table_t {
        guard !fields.isEmpty else { return amqp_table_t(num_entries: 0, entries: nil) }
        let entries = allocate(MemoryLayout<amqp_table_entry_t>.stride * fields.count)
            .bindMemory(to: amqp_table_entry_t.self, capacity: fields.count)
        // Sorted keys: the same table always encodes to the same bytes (comparable captures).
        for (index, key) in fields.keys.sorted().enumerated() {
            (entries + index).initialize(
                to: amqp_table_entry_t(key: bytes(key), value: value(fields[key]!)))
        }
        return amqp_table_t(num_entries: Int32(fields.count), entries: entries)
    }

    func value(_ field: AMQPFieldValue) -> amqp_field_value_t {
        var out = amqp_field_value_t()
        switch field {
        case .string(let string):
            out.kind = Self.kind(AMQP_FIELD_KIND_UTF8)
            out.value.bytes = bytes(string)
        case .int(let number):
            out.kind = Self.kind(AMQP_FIELD_KIND_I64)
            out.value.i64 = number
        case .bool(let flag):
            out.kind = Self.kind(AMQP_FIELD_KIND_BOOLEAN)
            out.value.boolean = flag ? 1 : 0
        case .double(let number):
            out.kind = Self.kind(AMQP_FIELD_KIND_F64)
            out.value.f64 = number
        case .timestamp(let seconds):
            out.kind = Self.kind(AMQP_FIELD_KIND_TIMESTAMP)
            out.value.u64 = seconds
        case .decimal(let scale, let number):
            out.kind = Self.kind(AMQP_FIELD_KIND_DECIMAL)
            out.value.decimal = amqp_decimal_t(decimals: scale, value: number)
        case .bytes(let raw):
            out.kind = Self.kind(AMQP_FIELD_KIND_BYTES)
            out.value.bytes = bytes(raw)
        case .table(let fields):
            out.kind = Self.kind(AMQP_FIELD_KIND_TABLE)
            out.value.table = table(fields)
        case .array(let items):
            out.kind = Self.kind(AMQP_FIELD_KIND_ARRAY)
            let entries = allocate(MemoryLayout<amqp_field_value_t>.stride * max(items.count, 1))
                .bindMemory(to: amqp_field_value_t.self, capacity: max(items.count, 1))
            for (index, item) in items.enumerated() { (entries + index).initialize(to: value(item)) }
            out.value.array = amqp_array_t(num_entries: Int32(items.count), entries: entries)
        case .void:
            out.kind = Self.kind(AMQP_FIELD_KIND_VOID)
        }
        return out
    }

    private static func kind(_ kind: amqp_field_value_kind_t) -> UInt8 { UInt8(kind.rawValue) }
}

/// Copies out of library-owned memory (connection or message pools, which are recycled after
/// the frame is handled).
enum CDecode {
    static func bytes(_ value: amqp_bytes_t) -> [UInt8] {
        guard value.len > 0, let pointer = value.bytes else { return [] }
        return Array(UnsafeRawBufferPointer(start: pointer, count: value.len))
    }

    static func string(_ value: amqp_bytes_t) -> String {
        String(decoding: bytes(value), as: UTF8.self)
    }

    static func table(_ table: amqp_table_t) -> [String: AMQPFieldValue] {
        guard table.num_entries > 0, let entries = table.entries else { return [:] }
        var out: [String: AMQPFieldValue] = [:]
        for index in 0..<Int(table.num_entries) {
            let entry = entries[index]
            out[string(entry.key)] = value(entry.value)
        }
        return out
    }

    static func value(_ field: amqp_field_value_t) -> AMQPFieldValue {
        let v = field.value
        switch UInt32(field.kind) {
        case AMQP_FIELD_KIND_BOOLEAN.rawValue: return .bool(v.boolean != 0)
        case AMQP_FIELD_KIND_I8.rawValue: return .int(Int64(v.i8))
        case AMQP_FIELD_KIND_U8.rawValue: return .int(Int64(v.u8))
        case AMQP_FIELD_KIND_I16.rawValue: return .int(Int64(v.i16))
        case AMQP_FIELD_KIND_U16.rawValue: return .int(Int64(v.u16))
        case AMQP_FIELD_KIND_I32.rawValue: return .int(Int64(v.i32))
        case AMQP_FIELD_KIND_U32.rawValue: return .int(Int64(v.u32))
        case AMQP_FIELD_KIND_I64.rawValue: return .int(v.i64)
        case AMQP_FIELD_KIND_U64.rawValue:
            return v.u64 <= UInt64(Int64.max) ? .int(Int64(v.u64)) : .double(Double(v.u64))
        case AMQP_FIELD_KIND_F32.rawValue: return .double(Double(v.f32))
        case AMQP_FIELD_KIND_F64.rawValue: return .double(v.f64)
        case AMQP_FIELD_KIND_DECIMAL.rawValue:
            return .decimal(scale: v.decimal.decimals, value: v.decimal.value)
        case AMQP_FIELD_KIND_UTF8.rawValue: return .string(string(v.bytes))
        case AMQP_FIELD_KIND_BYTES.rawValue: return .bytes(bytes(v.bytes))
        case AMQP_FIELD_KIND_TIMESTAMP.rawValue: return .timestamp(v.u64)
        case AMQP_FIELD_KIND_TABLE.rawValue: return .table(table(v.table))
        case AMQP_FIELD_KIND_ARRAY.rawValue:
            guard v.array.num_entries > 0, let entries = v.array.entries else { return .array([]) }
            return .array((0..<Int(v.array.num_entries)).map { value(entries[$0]) })
        default: return .void
        }
    }
}
