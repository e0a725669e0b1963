package main

// Withdrawing a regular alias (UserEdit dropalias, the "dropalias"
// extension; Protocol.md, Extensions). The alias moves from the member's
// Aliases to its RetiredAliases (nameRetired: it resolves for nobody and
// nobody can claim it, its owner included), and every group that lists the
// member under it lists the member under its oldest remaining alias
// instead.
//
// Several records change, in this order: each group's record is rewritten
// to the new alias first, then the user's record retires the alias. A crash
// in between leaves the alias the member's, resolving again, and some of its
// groups listing another of its aliases: both valid states. No order ever
// leaves a group listing a retired alias, so a restart needs no repair.

import (
	"errors"
	"fmt"
	"maps"
	"slices"

	"mnm/qlib"
)

// DropAlias withdraws uid's alias, a regular or an unused single-use one;
// see qlib.Directory.
func (db *UserDB) DropAlias(uid, alias string) ([]qlib.AliasMove, error) {
	// Aliases are only removed under dropMu, so one that is not uid's now
	// is not going to be; a single-use one is withdrawn as before.
	if _, rec := db.lookup(uid); rec == nil || !slices.Contains(rec.Aliases, alias) {
		return nil, db.DropOnceAlias(uid, alias)
	}
	db.dropMu.Lock()
	defer db.dropMu.Unlock()
	_, rec := db.lookup(uid)
	i := slices.Index(rec.Aliases, alias)
	switch {
	case i < 0: // withdrawn meanwhile
		return nil, qlib.ErrAliasUnknown
	case len(rec.Aliases) == 1:
		return nil, qlib.ErrLastAlias
	case len(rec.OnceAliases)+len(rec.RetiredAliases) >= maxReservedAliases:
		return nil, qlib.ErrReservedFull
	}
	// The oldest other alias: aliases are only appended, and none but
	// this one is removed while dropMu is held, so it stays uid's.
	next := rec.Aliases[0]
	if i == 0 {
		next = rec.Aliases[1]
	}
	// The name stops resolving first: from now on no join, rename or
	// invitation lists uid under it (they check ownership with the group's
	// write lock held), so the groups relisted below stay relisted.
	db.mu.Lock()
	if err := db.writableLocked(); err != nil {
		db.mu.Unlock()
		return nil, err
	}
	db.names[alias].kind = nameRetired
	db.mu.Unlock()
	moves, err := db.relist(uid, alias, next)
	if err == nil {
		err = db.update(uid, func(rec *userRecord) error {
			rec.Aliases = slices.DeleteFunc(rec.Aliases, func(a string) bool { return a == alias })
			rec.RetiredAliases = append(rec.RetiredAliases, alias)
			return nil
		})
	}
	if err != nil {
		// The groups relisted stay so (valid: next is uid's); the alias
		// is uid's again, unless a doubtful failure stops all writes.
		db.mu.Lock()
		db.names[alias].kind = nameAlias
		db.mu.Unlock()
		if errors.Is(err, qlib.ErrNoUser) {
			return nil, qlib.ErrAliasUnknown
		}
		return nil, err
	}
	db.logger.Info("alias withdrawn", "uid", uid, "groups", len(moves))
	return moves, nil
}

// relist rewrites every group that lists uid under alias to list it under
// next, one group at a time (each group's write lock is held only across
// its own write, and no user's lock is taken), and returns the changes.
func (db *UserDB) relist(uid, alias, next string) ([]qlib.AliasMove, error) {
	db.mu.RLock()
	gids := slices.Sorted(maps.Keys(db.groups))
	db.mu.RUnlock()
	// A group created after this snapshot checked its aliases after the
	// alias stopped resolving, so it does not list it.
	var moves []qlib.AliasMove
	for _, gid := range gids {
		g := db.lockGroup(gid)
		if g == nil {
			continue
		}
		rec := g.rec.Load()
		i := rec.member(uid)
		if i < 0 || rec.Members[i].Alias != alias {
			g.wmu.Unlock()
			continue
		}
		rec = rec.clone()
		rec.Members[i].Alias = next
		err := db.writable()
		if err == nil {
			err = db.saveGroup(g, rec)
		}
		g.wmu.Unlock()
		if err != nil {
			return nil, fmt.Errorf("relist %s: %w", gid, err)
		}
		moves = append(moves, qlib.AliasMove{Gid: gid, Alias: alias, NewAlias: next, Notify: rec.joined()})
	}
	return moves, nil
}
