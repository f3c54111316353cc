package store

import (
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"regexp"
	"strings"

	"github.com/dgraph-io/badger/v4"

	v1 "github.com/orchardci/orchard/fleet/v1"
)

// eventKey orders a VM's events by the revision that appended them and
// their place in that transaction.
func eventKey(uid string, rev uint64, index int) string {
	return fmt.Sprintf("%s%s/%016x-%08x", prefixEvents, uid, rev, index)
}

func eventsPrefix(uid string) []byte { return []byte(prefixEvents + uid + "/") }

// EventsQuery selects a page of a VM's log.
type EventsQuery struct {
	// Cursor continues after the last event of a previous page; "" starts
	// at the beginning (or the end, with Descending).
	Cursor string
	// Limit bounds the page; 0 means no bound.
	Limit int
	// Descending returns the newest events first.
	Descending bool
}

// cursorShape is what an event key's suffix, and so a cursor, looks like.
var cursorShape = regexp.MustCompile(`^[0-9a-f]{16}-[0-9a-f]{8}$`)

// ErrBadCursor is returned for a cursor this store did not hand out.
var ErrBadCursor = errors.New("invalid cursor")

// Events returns a page of the log of the VM with the given UID and a
// cursor that continues after its last event ("" for an empty page), so
// a reader can page to the end and later resume there for new events.
func (s *Store) Events(uid string, q EventsQuery) ([]v1.Event, string, error) {
	prefix := eventsPrefix(uid)
	var after []byte
	if q.Cursor != "" {
		suffix, err := base64.RawURLEncoding.DecodeString(q.Cursor)
		if err != nil || !cursorShape.Match(suffix) {
			return nil, "", ErrBadCursor
		}
		after = append(append([]byte{}, prefix...), suffix...)
	}
	events := []v1.Event{}
	var next string
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix, Reverse: q.Descending, PrefetchValues: true, PrefetchSize: 100})
		defer it.Close()
		switch {
		case after != nil:
			it.Seek(after)
			if it.Valid() && string(it.Item().Key()) == string(after) {
				it.Next()
			}
		case q.Descending:
			it.Seek(append(append([]byte{}, prefix...), 0xff))
		default:
			it.Seek(prefix)
		}
		var lastKey []byte
		for ; it.ValidForPrefix(prefix); it.Next() {
			if q.Limit > 0 && len(events) == q.Limit {
				break
			}
			var e v1.Event
			item := it.Item()
			if err := item.Value(func(val []byte) error { return json.Unmarshal(val, &e) }); err != nil {
				return fmt.Errorf("read event %s: %w", item.Key(), err)
			}
			events = append(events, e)
			lastKey = item.KeyCopy(lastKey[:0])
		}
		if lastKey != nil {
			next = base64.RawURLEncoding.EncodeToString(lastKey[len(prefix):])
		}
		return nil
	})
	if err != nil {
		return nil, "", err
	}
	return events, next, nil
}

// deleteEventsLater removes the log of a deleted VM in the background: a
// log can be long, and the delete that caused it should not wait.
func (s *Store) deleteEventsLater(uid string) {
	if uid == "" {
		return
	}
	s.cleanup.Add(1)
	go func() {
		defer s.cleanup.Done()
		if err := s.deleteEvents(uid); err != nil {
			s.logger.Warn("delete events of a deleted VM", "uid", uid, "err", err)
		}
	}()
}

func (s *Store) deleteEvents(uid string) error {
	prefix := eventsPrefix(uid)
	var keys [][]byte
	err := s.db.View(func(txn *badger.Txn) error {
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Seek(prefix); it.ValidForPrefix(prefix); it.Next() {
			keys = append(keys, it.Item().KeyCopy(nil))
		}
		return nil
	})
	if err != nil || len(keys) == 0 {
		return err
	}
	wb := s.db.NewWriteBatch()
	defer wb.Cancel()
	for _, k := range keys {
		if err := wb.Delete(k); err != nil {
			return err
		}
	}
	return wb.Flush()
}

// deleteOrphanEvents removes logs whose VM is gone, left behind when the
// controller stopped before a background deletion finished.
func (s *Store) deleteOrphanEvents() {
	orphans := map[string]bool{}
	live := map[string]bool{}
	for _, r := range s.vms {
		live[r.vm.UID] = true
	}
	_ = s.db.View(func(txn *badger.Txn) error {
		prefix := []byte(prefixEvents)
		it := txn.NewIterator(badger.IteratorOptions{Prefix: prefix})
		defer it.Close()
		for it.Seek(prefix); it.ValidForPrefix(prefix); {
			uid, _, _ := strings.Cut(string(it.Item().Key()[len(prefix):]), "/")
			if !live[uid] {
				orphans[uid] = true
			}
			// Skip the rest of this VM's events.
			it.Seek([]byte(prefixEvents + uid + "/\xff"))
		}
		return nil
	})
	for uid := range orphans {
		s.deleteEventsLater(uid)
	}
}
