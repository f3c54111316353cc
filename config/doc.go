// Package config loads the controller's configuration into typed structs:
// config.yaml, ORCHARD_* environment variables and command-line flags,
// layered through viper over the defaults, then validated.
//
// # Sources and precedence
//
// Load takes a Source and reads, lowest precedence first:
//
//  1. Default(), the value of every key no source sets.
//  2. The file (Source.File, from --config or ORCHARD_CONFIG, resolved by the
//     caller). A path that was given must exist. config.example.yaml beside
//     this file lists every key with its default.
//  3. The environment (Source.Env): each scalar key as ORCHARD_<SECTION>_<KEY>,
//     upper case, dots turned into underscores (controller.tls.cert_file is
//     ORCHARD_CONTROLLER_TLS_CERT_FILE). The CLI's own variables (ORCHARD_HOME,
//     ORCHARD_URL, ORCHARD_CONFIG, ...) are not keys and are skipped; so is
//     any ORCHARD_ variable outside a known section. An unknown name inside a
//     known section (ORCHARD_LOG_LEVLE) is an error. An empty variable is unset.
//  4. Flags (Source.Flags with Source.FlagKeys, which maps a flag's name to
//     its key): only flags set on the command line apply.
//
// Lists (the autoscaler's pools, say) can only be set in the file.
//
// # How data flows
//
// Every source is first turned into a "raw" tree: nested maps of sections
// with each scalar's text at the leaves (a YAML scalar, a variable's value
// and a flag's value are all text, so one parser per Go type serves all
// three). Each tree is decoded on its own into a scratch value, so that an
// unknown key or a malformed value is reported against its source even when
// a higher source overrides it. viper then merges the trees: the defaults as
// viper defaults, the file and then the environment merged into viper's
// config map, flags bound as viper flags. The merged tree is decoded into a
// Config and validated; a bad value is blamed on the source that won.
//
// Errors name the key and its source, one per line, for example
//
//	config /etc/orchard/config.yaml:7: controller.worker_offline_timeout: "3 minutes" is not a duration (e.g. 90s, 3m)
//	config /etc/orchard/config.yaml:3: unknown key "controller.listn" (did you mean "controller.listen"?)
//	env ORCHARD_LOG_LEVEL: log.level: unknown log level "verbose" (want debug, info, warn or error)
//	flag --listen: controller.listen: "6120" is not host:port (e.g. :6120 or 127.0.0.1:6120)
//
// and each line is an *Error whose Source and Key can be read with errors.As.
// Values of type string are never echoed in a type error, since they may be
// secrets; validators must not echo secret values either.
//
// # Adding a section
//
// A section is a struct; the package finds everything else by reflection.
//
//  1. Add a field to Config with a `config:"name"` tag, of a struct type whose
//     fields all have `config` tags. Field types: string, bool, integers,
//     floats, time.Duration, nested structs, and slices of these or of
//     structs (slices are file-only).
//  2. Set its defaults in Default(). If it is a list of structs whose
//     elements have defaults, give the element type an applyDefaults method
//     on its pointer; each element gets them before the file's keys.
//  3. Give the struct (or its element type) a validate(checks) method that
//     calls check.fail(key, ...) with keys relative to the struct.
//  4. Add its keys, defaults and one-line comments to config.example.yaml;
//     a test requires every key there.
//
// Its keys, environment variables, unknown-key checks and error sources
// follow from that.
package config
