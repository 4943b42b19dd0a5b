package policy

import (
	"bytes"
	"encoding/base64"
	"fmt"
	"math"
	"strconv"

	"github.com/open-policy-agent/opa/v1/ast"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/reflect/protoreflect"
)

// protoValue is m in protobuf's JSON mapping (what protojson.Marshal writes,
// and what OPA-Envoy gives a policy), built straight into OPA's value form:
// the text round trip cost half of an ext_authz decision. Fields as their JSON
// names, unset fields left out, 64-bit integers as strings, enums by name,
// bytes in base64, and the well-known types as protojson writes them.
// TestProtoValueIsProtojson holds it to protojson's output.
func protoValue(m protoreflect.Message) (ast.Value, error) {
	switch m.Descriptor().FullName() {
	case "google.protobuf.Timestamp", "google.protobuf.Duration", "google.protobuf.FieldMask",
		"google.protobuf.Any", "google.protobuf.Empty":
		return viaJSON(m)
	case "google.protobuf.Struct":
		return structValue(m)
	case "google.protobuf.Value":
		return valueValue(m)
	case "google.protobuf.ListValue":
		return listValue(m)
	case "google.protobuf.BoolValue", "google.protobuf.StringValue", "google.protobuf.BytesValue",
		"google.protobuf.Int32Value", "google.protobuf.UInt32Value", "google.protobuf.Int64Value",
		"google.protobuf.UInt64Value", "google.protobuf.FloatValue", "google.protobuf.DoubleValue":
		fd := m.Descriptor().Fields().ByName("value")
		return scalar(fd, m.Get(fd))
	}
	obj := ast.NewObject()
	var err error
	m.Range(func(fd protoreflect.FieldDescriptor, v protoreflect.Value) bool {
		var val ast.Value
		switch {
		case fd.IsMap():
			mo := ast.NewObject()
			v.Map().Range(func(k protoreflect.MapKey, mv protoreflect.Value) bool {
				var e ast.Value
				if e, err = single(fd.MapValue(), mv); err != nil {
					return false
				}
				mo.Insert(ast.StringTerm(k.String()), ast.NewTerm(e))
				return true
			})
			val = mo
		case fd.IsList():
			list := v.List()
			terms := make([]*ast.Term, list.Len())
			for i := range list.Len() {
				var e ast.Value
				if e, err = single(fd, list.Get(i)); err != nil {
					return false
				}
				terms[i] = ast.NewTerm(e)
			}
			val = ast.NewArray(terms...)
		default:
			val, err = single(fd, v)
		}
		if err != nil {
			return false
		}
		obj.Insert(ast.StringTerm(fd.JSONName()), ast.NewTerm(val))
		return true
	})
	return obj, err
}

func single(fd protoreflect.FieldDescriptor, v protoreflect.Value) (ast.Value, error) {
	if fd.Kind() == protoreflect.MessageKind || fd.Kind() == protoreflect.GroupKind {
		return protoValue(v.Message())
	}
	return scalar(fd, v)
}

func scalar(fd protoreflect.FieldDescriptor, v protoreflect.Value) (ast.Value, error) {
	switch fd.Kind() {
	case protoreflect.BoolKind:
		return ast.Boolean(v.Bool()), nil
	case protoreflect.StringKind:
		return ast.String(v.String()), nil
	case protoreflect.BytesKind:
		return ast.String(base64.StdEncoding.EncodeToString(v.Bytes())), nil
	case protoreflect.Int32Kind, protoreflect.Sint32Kind, protoreflect.Sfixed32Kind:
		return ast.Number(strconv.FormatInt(v.Int(), 10)), nil
	case protoreflect.Uint32Kind, protoreflect.Fixed32Kind:
		return ast.Number(strconv.FormatUint(v.Uint(), 10)), nil
	case protoreflect.Int64Kind, protoreflect.Sint64Kind, protoreflect.Sfixed64Kind:
		return ast.String(strconv.FormatInt(v.Int(), 10)), nil
	case protoreflect.Uint64Kind, protoreflect.Fixed64Kind:
		return ast.String(strconv.FormatUint(v.Uint(), 10)), nil
	case protoreflect.FloatKind, protoreflect.DoubleKind:
		f := v.Float()
		switch {
		case math.IsNaN(f):
			return ast.String("NaN"), nil
		case math.IsInf(f, 1):
			return ast.String("Infinity"), nil
		case math.IsInf(f, -1):
			return ast.String("-Infinity"), nil
		}
		bits := 64
		if fd.Kind() == protoreflect.FloatKind {
			bits = 32
		}
		return ast.Number(strconv.FormatFloat(f, 'g', -1, bits)), nil
	case protoreflect.EnumKind:
		if ev := fd.Enum().Values().ByNumber(v.Enum()); ev != nil {
			return ast.String(string(ev.Name())), nil
		}
		return ast.Number(strconv.FormatInt(int64(v.Enum()), 10)), nil
	}
	return nil, fmt.Errorf("protoValue: %s: unsupported kind %s", fd.FullName(), fd.Kind())
}

func structValue(m protoreflect.Message) (ast.Value, error) {
	fields := m.Descriptor().Fields().ByName("fields")
	obj := ast.NewObject()
	var err error
	m.Get(fields).Map().Range(func(k protoreflect.MapKey, v protoreflect.Value) bool {
		var e ast.Value
		if e, err = valueValue(v.Message()); err != nil {
			return false
		}
		obj.Insert(ast.StringTerm(k.String()), ast.NewTerm(e))
		return true
	})
	return obj, err
}

func listValue(m protoreflect.Message) (ast.Value, error) {
	values := m.Get(m.Descriptor().Fields().ByName("values")).List()
	terms := make([]*ast.Term, values.Len())
	for i := range values.Len() {
		e, err := valueValue(values.Get(i).Message())
		if err != nil {
			return nil, err
		}
		terms[i] = ast.NewTerm(e)
	}
	return ast.NewArray(terms...), nil
}

func valueValue(m protoreflect.Message) (ast.Value, error) {
	od := m.Descriptor().Oneofs().ByName("kind")
	fd := m.WhichOneof(od)
	if fd == nil {
		return ast.Null{}, nil
	}
	v := m.Get(fd)
	switch fd.Name() {
	case "null_value":
		return ast.Null{}, nil
	case "number_value":
		return ast.Number(strconv.FormatFloat(v.Float(), 'g', -1, 64)), nil
	case "string_value":
		return ast.String(v.String()), nil
	case "bool_value":
		return ast.Boolean(v.Bool()), nil
	case "struct_value":
		return structValue(v.Message())
	case "list_value":
		return listValue(v.Message())
	}
	return ast.Null{}, nil
}

// viaJSON is a well-known type whose JSON form has rules of its own (times,
// durations, Any): written by protojson itself.
func viaJSON(m protoreflect.Message) (ast.Value, error) {
	b, err := protojson.Marshal(m.Interface())
	if err != nil {
		return nil, err
	}
	return ast.ValueFromReader(bytes.NewReader(b))
}
