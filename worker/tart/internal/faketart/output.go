package main

import (
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// object is a JSON object whose keys keep Tart's declaration order.
type object []field

type field struct {
	key   string
	value any // string, int, int64, bool
}

// appleJSON encodes v as Swift's JSONEncoder with .prettyPrinted does:
// two-space indent, `"key" : value`, "/" escaped as "\/", and empty
// containers printed as "[\n\n]".
func appleJSON(v any) string {
	var b strings.Builder
	encodeApple(&b, v, "")
	return b.String()
}

func encodeApple(b *strings.Builder, v any, indent string) {
	inner := indent + "  "
	switch v := v.(type) {
	case object:
		if len(v) == 0 {
			b.WriteString("{\n\n" + indent + "}")
			return
		}
		b.WriteString("{\n")
		for i, f := range v {
			b.WriteString(inner + appleQuote(f.key) + " : ")
			encodeApple(b, f.value, inner)
			if i < len(v)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + "}")
	case []object:
		if len(v) == 0 {
			b.WriteString("[\n\n" + indent + "]")
			return
		}
		b.WriteString("[\n")
		for i, o := range v {
			b.WriteString(inner)
			encodeApple(b, o, inner)
			if i < len(v)-1 {
				b.WriteByte(',')
			}
			b.WriteByte('\n')
		}
		b.WriteString(indent + "]")
	case string:
		b.WriteString(appleQuote(v))
	case int:
		b.WriteString(strconv.Itoa(v))
	case int64:
		b.WriteString(strconv.FormatInt(v, 10))
	case uint64:
		b.WriteString(strconv.FormatUint(v, 10))
	case bool:
		b.WriteString(strconv.FormatBool(v))
	default:
		panic(fmt.Sprintf("appleJSON: unsupported %T", v))
	}
}

func appleQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch r {
		case '"':
			b.WriteString(`\"`)
		case '\\':
			b.WriteString(`\\`)
		case '/':
			b.WriteString(`\/`)
		case '\n':
			b.WriteString(`\n`)
		case '\r':
			b.WriteString(`\r`)
		case '\t':
			b.WriteString(`\t`)
		case '\b':
			b.WriteString(`\b`)
		case '\f':
			b.WriteString(`\f`)
		case utf8.RuneError:
			b.WriteString(`\ufffd`)
		default:
			if r < 0x20 {
				fmt.Fprintf(&b, `\u%04x`, r)
			} else {
				b.WriteRune(r)
			}
		}
	}
	b.WriteByte('"')
	return b.String()
}

// table renders TextTable's "plain" style: columns two spaces apart,
// numeric columns right-aligned. No rows renders as the empty string.
func table(headers []string, rows [][]string, numeric []bool) string {
	if len(rows) == 0 {
		return ""
	}
	widths := make([]int, len(headers))
	for i, h := range headers {
		widths[i] = utf8.RuneCountInString(h)
	}
	for _, r := range rows {
		for i, c := range r {
			widths[i] = max(widths[i], utf8.RuneCountInString(c))
		}
	}
	var b strings.Builder
	line := func(cells []string) {
		var parts []string
		for i, c := range cells {
			pad := strings.Repeat(" ", widths[i]-utf8.RuneCountInString(c))
			if numeric[i] {
				parts = append(parts, pad+c)
			} else {
				parts = append(parts, c+pad)
			}
		}
		b.WriteString(strings.TrimRight(strings.Join(parts, "  "), " ") + "\n")
	}
	line(headers)
	for _, r := range rows {
		line(r)
	}
	return strings.TrimRight(b.String(), "\n")
}

// relative words a past time the way Tart's text list does.
func relative(t time.Time, now time.Time) string {
	d := now.Sub(t)
	unit := func(n int64, name string) string {
		if n == 1 {
			return "1 " + name + " ago"
		}
		return fmt.Sprintf("%d %ss ago", n, name)
	}
	switch {
	case d < time.Minute:
		return "just now"
	case d < time.Hour:
		return unit(int64(d/time.Minute), "minute")
	case d < 24*time.Hour:
		return unit(int64(d/time.Hour), "hour")
	default:
		return unit(int64(d/(24*time.Hour)), "day")
	}
}

// gigabytes words a byte count as Foundation's ByteCountFormatter does
// for whole and fractional GB.
func gigabytes(n int64) string {
	return strconv.FormatFloat(float64(n)/1e9, 'f', -1, 64) + " GB"
}
