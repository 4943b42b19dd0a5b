package field

import (
	"errors"
	"flag"
	"fmt"
	"strconv"
	"time"
)

// The flag.Values of a typed config's settings, each bound to the config field
// it sets, with errors that say what was wanted (the flag package's own say only
// "parse error"). A config that lists its settings in a table binds each to a
// flag and, by Set, to its environment variable.

// String binds a string field.
func String(p *string) flag.Value {
	return &value[string]{p, func(s string) (string, error) { return s, nil }, false}
}

// Bool binds a boolean field (a flag without a value sets it).
func Bool(p *bool) flag.Value {
	return &value[bool]{p, func(s string) (bool, error) {
		b, err := strconv.ParseBool(s)
		if err != nil {
			return false, errors.New("not a boolean (want 1, t, true, 0, f or false)")
		}
		return b, nil
	}, true}
}

// Duration binds a time.Duration field.
func Duration(p *time.Duration) flag.Value {
	return &value[time.Duration]{p, func(s string) (time.Duration, error) {
		d, err := time.ParseDuration(s)
		if err != nil {
			return 0, errors.New("not a duration (want e.g. 90s or 5m)")
		}
		return d, nil
	}, false}
}

// Int binds an int field.
func Int(p *int) flag.Value {
	return &value[int]{p, func(s string) (int, error) {
		n, err := strconv.Atoi(s)
		if err != nil {
			return 0, errors.New("not a whole number")
		}
		return n, nil
	}, false}
}

// value is a field of type T as a flag.Value.
type value[T any] struct {
	p      *T
	parse  func(string) (T, error)
	isBool bool
}

func (v *value[T]) Set(s string) error {
	x, err := v.parse(s)
	if err == nil {
		*v.p = x
	}
	return err
}

// String shows the field as its flag's default; the flag package also calls it
// on a zero value, to tell a zero default.
func (v *value[T]) String() string {
	if v == nil || v.p == nil {
		var zero T
		return fmt.Sprint(zero)
	}
	return fmt.Sprint(*v.p)
}

// IsBoolFlag lets a boolean flag stand without a value.
func (v *value[T]) IsBoolFlag() bool { return v.isBool }
